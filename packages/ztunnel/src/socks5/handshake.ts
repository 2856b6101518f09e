import { isIPv4, isIPv6 } from 'node:net';

/** RFC 1928 reply codes. */
export const SOCKS5_REPLY = {
  SUCCEEDED: 0x00,
  GENERAL_FAILURE: 0x01,
  NOT_ALLOWED: 0x02,
  NETWORK_UNREACHABLE: 0x03,
  HOST_UNREACHABLE: 0x04,
  CONNECTION_REFUSED: 0x05,
  TTL_EXPIRED: 0x06,
  COMMAND_NOT_SUPPORTED: 0x07,
  ADDRESS_TYPE_NOT_SUPPORTED: 0x08,
} as const;

/** Where the client asked to go. `host` is an IP literal, or a name when `addressType` is `domain`. */
export interface Socks5Request {
  host: string;
  port: number;
  addressType: 'ipv4' | 'ipv6' | 'domain';
}

/** One step of the server side of the handshake. */
export type HandshakeStep =
  /** Need more bytes. */
  | { kind: 'more' }
  /** Send `reply`, keep reading (method selection done). */
  | { kind: 'reply'; reply: Buffer }
  /** Send `reply` (may be empty) and close. */
  | { kind: 'fail'; reply: Buffer; reason: string }
  /**
   * A CONNECT request. `reply` are bytes still to send before the CONNECT reply (the method selection
   * when greeting and request came together); `rest` are bytes the client sent after the request.
   */
  | { kind: 'connect'; request: Socks5Request; reply: Buffer; rest: Buffer };

const VERSION = 5;
const NO_AUTH = 0x00;
const NO_ACCEPTABLE = 0xff;
const CMD_CONNECT = 1;

/** A reply with an all-zero IPv4 bound address, as most servers send. */
export function socks5Reply(code: number): Buffer {
  return Buffer.from([VERSION, code, 0, 1, 0, 0, 0, 0, 0, 0]);
}

const HOSTNAME = /^[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$/;

/**
 * The server side of a SOCKS5 handshake (no authentication, CONNECT only), fed bytes as they come.
 * Pure: no sockets, so every hostile input can be tested directly.
 */
export class Socks5Handshake {
  #buf: Buffer = Buffer.alloc(0);
  #state: 'greeting' | 'request' | 'done' = 'greeting';

  push(chunk: Buffer): HandshakeStep {
    if (this.#state === 'done') return { kind: 'fail', reply: Buffer.alloc(0), reason: 'handshake already finished' };
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    return this.#state === 'greeting' ? this.#greeting() : this.#request();
  }

  #fail(reply: Buffer, reason: string): HandshakeStep {
    this.#state = 'done';
    return { kind: 'fail', reply, reason };
  }

  #greeting(): HandshakeStep {
    const b = this.#buf;
    if (b.length < 2) return { kind: 'more' };
    if (b[0] !== VERSION) return this.#fail(Buffer.alloc(0), `not SOCKS5 (version byte ${b[0]})`);
    const n = b[1]!;
    if (b.length < 2 + n) return { kind: 'more' };
    const methods = b.subarray(2, 2 + n);
    if (!methods.includes(NO_AUTH)) {
      return this.#fail(Buffer.from([VERSION, NO_ACCEPTABLE]), `client offers no 'no authentication' method (offered ${[...methods].join(',') || 'none'})`);
    }
    this.#buf = b.subarray(2 + n);
    this.#state = 'request';
    const reply = Buffer.from([VERSION, NO_AUTH]);
    // A client may send its request right behind the greeting.
    if (this.#buf.length === 0) return { kind: 'reply', reply };
    const next = this.#request();
    if (next.kind === 'more' || next.kind === 'reply') return { kind: 'reply', reply };
    return { ...next, reply: Buffer.concat([reply, next.reply]) };
  }

  #request(): HandshakeStep {
    const b = this.#buf;
    if (b.length < 5) return { kind: 'more' };
    if (b[0] !== VERSION) return this.#fail(socks5Reply(SOCKS5_REPLY.GENERAL_FAILURE), `request version byte ${b[0]}`);
    if (b[1] !== CMD_CONNECT) {
      const name = b[1] === 2 ? 'BIND' : b[1] === 3 ? 'UDP ASSOCIATE' : `command ${b[1]}`;
      return this.#fail(socks5Reply(SOCKS5_REPLY.COMMAND_NOT_SUPPORTED), `${name} is not supported (CONNECT only)`);
    }
    const atyp = b[3];
    let host: string;
    let addressType: Socks5Request['addressType'];
    let end: number;
    if (atyp === 1) {
      end = 4 + 4;
      if (b.length < end + 2) return { kind: 'more' };
      host = [...b.subarray(4, 8)].join('.');
      addressType = 'ipv4';
    } else if (atyp === 4) {
      end = 4 + 16;
      if (b.length < end + 2) return { kind: 'more' };
      const groups: string[] = [];
      for (let i = 4; i < end; i += 2) groups.push(b.readUInt16BE(i).toString(16));
      host = new URL(`http://[${groups.join(':')}]/`).hostname.slice(1, -1);
      addressType = 'ipv6';
    } else if (atyp === 3) {
      const len = b[4]!;
      end = 5 + len;
      if (b.length < end + 2) return { kind: 'more' };
      host = b.subarray(5, end).toString('latin1');
      addressType = 'domain';
      if (len === 0 || !HOSTNAME.test(host)) {
        return this.#fail(socks5Reply(SOCKS5_REPLY.HOST_UNREACHABLE), `destination name ${JSON.stringify(host)} is not a hostname`);
      }
      host = host.replace(/\.$/, '');
      // Some clients send an IP literal as a "name".
      if (isIPv4(host)) addressType = 'ipv4';
      else if (isIPv6(host)) addressType = 'ipv6';
    } else {
      return this.#fail(socks5Reply(SOCKS5_REPLY.ADDRESS_TYPE_NOT_SUPPORTED), `address type ${atyp} is not supported`);
    }
    const port = b.readUInt16BE(end);
    this.#state = 'done';
    const rest = Buffer.from(b.subarray(end + 2));
    this.#buf = Buffer.alloc(0);
    return { kind: 'connect', request: { host, port, addressType }, reply: Buffer.alloc(0), rest };
  }
}
