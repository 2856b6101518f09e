export { NetnsError, errnoName } from './errors.js';
export type { NetnsErrorCode } from './errors.js';
export { Netns, openNetns, openNetnsOfPid, adoptNetnsFd, currentNetns, socketNetnsId } from './netns.js';
export type { NetnsId } from './netns.js';
export {
  createTcpListener,
  listenTcp,
  createTcpSocket,
  connectTcp,
  originalDst,
  socketLocalAddress,
} from './tcp.js';
export type { TcpListenerOptions, TcpSocketOptions, ConnectTcpOptions, SocketAddress } from './tcp.js';
export { setTcpKeepalive, tcpKeepalive } from './keepalive.js';
export type { TcpKeepalive } from './keepalive.js';
export { createUdpSocket, bindUdp } from './udp.js';
export type { UdpSocketOptions } from './udp.js';
export { NETLINK_ROUTE, listAddresses, netlinkExchange } from './netlink.js';
export type { NetnsAddress } from './netlink.js';
export { spawnInNetns, readSysctls, writeSysctls } from './spawn.js';
export type { SpawnInNetnsOptions, SpawnInNetnsResult } from './spawn.js';
export { SeqpacketServer, SeqpacketSocket, listenSeqpacket, connectSeqpacket } from './seqpacket.js';
