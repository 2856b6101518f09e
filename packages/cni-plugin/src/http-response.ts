/** An HTTP/1.x response read off a socket: status and decoded body (headers are not needed). */
export interface HttpResponse {
  status: number;
  body: Buffer;
}

const MAX_HEAD_BYTES = 16 * 1024;
const STATUS_LINE = /^HTTP\/1\.[01] (\d{3})(?: [^\r\n]*)?$/;
const HEADER_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*$/;
const CRLF = Buffer.from('\r\n');
const HEAD_END = Buffer.from('\r\n\r\n');

/**
 * The final response in `buf` (interim 1xx responses skipped), or undefined while more bytes are
 * needed. `ended`: the peer closed its side, so a body without a length ends here and a short one is
 * an error. Throws an Error naming what is malformed (the line or byte count at fault).
 */
export function readHttpResponse(buf: Buffer, ended: boolean): HttpResponse | undefined {
  let at = 0;
  for (;;) {
    if (buf.length === at) return undefined;
    const headEnd = buf.indexOf(HEAD_END, at);
    if (headEnd < 0) {
      if (buf.length - at > MAX_HEAD_BYTES) throw new Error(`response head longer than ${MAX_HEAD_BYTES} bytes`);
      if (ended) throw new Error(`connection closed inside the response head after ${buf.length - at} bytes`);
      return undefined;
    }
    const lines = buf.toString('latin1', at, headEnd).split('\r\n');
    const statusLine = lines[0] ?? '';
    const m = STATUS_LINE.exec(statusLine);
    if (!m) throw new Error(`status line ${JSON.stringify(statusLine.slice(0, 64))} is not HTTP/1.0 or 1.1`);
    const status = Number(m[1]);
    const headers = parseHeaders(lines);
    at = headEnd + HEAD_END.length;
    // 101 would switch protocols, which this exchange never asks for.
    if (status >= 100 && status < 200 && status !== 101) continue;
    if (status === 204 || status === 304) return { status, body: Buffer.alloc(0) };
    return readBody(buf.subarray(at), status, headers, ended);
  }
}

function parseHeaders(lines: string[]): { contentLength: number | undefined; chunked: boolean; otherCoding: boolean } {
  let contentLength: number | undefined;
  let codings: string[] = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    const h = HEADER_LINE.exec(line);
    if (!h) throw new Error(`header line ${i} ${JSON.stringify(line.slice(0, 64))} is not "name: value"`);
    const name = h[1]!.toLowerCase();
    const value = h[2]!;
    if (name === 'content-length') {
      if (!/^\d{1,15}$/.test(value)) throw new Error(`Content-Length ${JSON.stringify(value.slice(0, 32))} is not a number`);
      const n = Number(value);
      if (contentLength !== undefined && contentLength !== n) throw new Error(`two different Content-Length headers (${contentLength}, ${n})`);
      contentLength = n;
    } else if (name === 'transfer-encoding') {
      codings = codings.concat(value.split(',').map((c) => c.trim().toLowerCase()).filter((c) => c !== ''));
    }
  }
  const chunked = codings.at(-1) === 'chunked';
  // With a transfer coding the length is the coding's (RFC 9112 6.3), whatever Content-Length says.
  return { contentLength: codings.length > 0 ? undefined : contentLength, chunked, otherCoding: codings.length > 0 && !chunked };
}

function readBody(
  rest: Buffer,
  status: number,
  h: { contentLength: number | undefined; chunked: boolean; otherCoding: boolean },
  ended: boolean,
): HttpResponse | undefined {
  if (h.chunked) return readChunked(rest, status, ended);
  if (h.contentLength !== undefined) {
    if (rest.length >= h.contentLength) return { status, body: rest.subarray(0, h.contentLength) };
    if (ended) throw new Error(`connection closed after ${rest.length} of ${h.contentLength} body bytes`);
    return undefined;
  }
  // No length: the body runs to the end of the connection.
  return ended ? { status, body: rest } : undefined;
}

function readChunked(rest: Buffer, status: number, ended: boolean): HttpResponse | undefined {
  const parts: Buffer[] = [];
  let at = 0;
  const short = (): undefined => {
    if (ended) throw new Error(`connection closed inside the chunked body at byte ${at}`);
    return undefined;
  };
  for (;;) {
    const eol = rest.indexOf(CRLF, at);
    if (eol < 0) return short();
    const sizeText = rest.toString('latin1', at, eol).split(';')[0]!.trim();
    if (!/^[0-9a-fA-F]{1,8}$/.test(sizeText)) throw new Error(`chunk size ${JSON.stringify(sizeText.slice(0, 16))} at body byte ${at} is not hex`);
    const size = parseInt(sizeText, 16);
    at = eol + CRLF.length;
    if (size === 0) {
      // Trailer fields, if any, up to the empty line.
      for (;;) {
        const end = rest.indexOf(CRLF, at);
        if (end < 0) return short();
        if (end === at) return { status, body: Buffer.concat(parts) };
        at = end + CRLF.length;
      }
    }
    if (rest.length < at + size + CRLF.length) return short();
    if (rest[at + size] !== 0x0d || rest[at + size + 1] !== 0x0a) throw new Error(`chunk of ${size} bytes at body byte ${at} is not followed by CRLF`);
    parts.push(rest.subarray(at, at + size));
    at += size + CRLF.length;
  }
}
