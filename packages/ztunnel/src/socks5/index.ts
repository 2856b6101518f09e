export { Socks5Listener, SOCKS5_PORT } from './socks5-listener.js';
export type { Socks5ListenerOptions, Socks5Target } from './socks5-listener.js';
export { Socks5Handshake, SOCKS5_REPLY, socks5Reply } from './handshake.js';
export type { HandshakeStep, Socks5Request } from './handshake.js';
