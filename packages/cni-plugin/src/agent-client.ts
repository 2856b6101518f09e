import { connect } from 'node:net';
import { CniPluginError } from './errors.js';
import { CMD_ADD_PATH, type CmdAddEventBody } from './event.js';
import { readHttpResponse, type HttpResponse } from './http-response.js';

export interface PostCmdAddOptions {
  /** The agent's socket, `<cni_agent_run_dir>/pluginevent.sock`. */
  socketPath: string;
  /** Whole-exchange deadline; default 5000 ms. */
  timeoutMs?: number;
}

/** The agent's 200 answer: what it did with the pod. */
export interface CmdAddAnswer {
  /** `captured` (`pod captured`) or `not-enrolled` (`pod not enrolled`); any other 200 body rejects. */
  outcome: 'captured' | 'not-enrolled';
  /** The body as sent, trimmed (at most 1 KiB). */
  body: string;
}

/** Largest answer read: the agent's are a line; anything bigger is not the agent. */
const MAX_RESPONSE_BYTES = 64 * 1024;

/**
 * POSTs a pod-add event to the node agent over its unix socket and resolves with its 200 answer (the
 * agent answers 200 only after capturing the pod, or having found it not enrolled). Anything else
 * rejects with a CniPluginError (CNI code 11, "try again later") naming the socket: code
 * ERR_CNI_AGENT_UNREACHABLE when no connection was established (no socket file, nobody listening),
 * ERR_CNI_AGENT_UNAVAILABLE when the agent was reached but answered non-200 (or 200 with another body),
 * broke off, sent something that is not HTTP/1.1, or missed the deadline.
 *
 * One HTTP/1.1 exchange on a plain socket rather than node:http: the plugin is exec'd once per pod, and
 * loading node:http costs ~20 ms of CPU per exec, a third of the plugin's start-up.
 */
export function postCmdAdd(event: CmdAddEventBody, opts: PostCmdAddOptions): Promise<CmdAddAnswer> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const body = Buffer.from(JSON.stringify(event), 'utf8');
  let connected = false;
  const fail = (what: string, cause?: unknown, reached = connected) =>
    new CniPluginError(
      reached ? 'ERR_CNI_AGENT_UNAVAILABLE' : 'ERR_CNI_AGENT_UNREACHABLE',
      `weir-cni ADD for pod ${event.PodNamespace}/${event.PodName} failed: node agent at ${opts.socketPath} ${what}; the pod is not started uncaptured, retry later`,
      { cause },
    );
  return new Promise<CmdAddAnswer>((resolve, reject) => {
    const socket = connect({ path: opts.socketPath });
    const chunks: Buffer[] = [];
    let received = 0;
    let settled = false;
    const done = (err: CniPluginError | undefined, answer?: CmdAddAnswer): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(answer!);
    };
    const timer = setTimeout(() => {
      // A deadline is never "unreachable": something holds the socket, so the ADD fails rather than falling back.
      done(fail(connected ? `did not answer within ${timeoutMs} ms` : `accepted no connection within ${timeoutMs} ms`, undefined, true));
    }, timeoutMs);
    const answer = (res: HttpResponse): void => {
      const text = res.body.toString('utf8').trim().slice(0, 1024);
      const outcome = res.status === 200 ? outcomeOf(text) : undefined;
      if (outcome) return done(undefined, { outcome, body: text });
      // Any other 200 is ambiguous (a proxy, another agent): the pod may not be captured, so it fails closed.
      if (res.status === 200) return done(fail(`answered 200 with an unknown body: ${text || '(empty)'}`));
      done(fail(`answered ${res.status}${text ? `: ${text}` : ''}`));
    };
    /** Parses what arrived; `ended` once the agent closed its side. */
    const parse = (ended: boolean): void => {
      let res: HttpResponse | undefined;
      try {
        res = readHttpResponse(Buffer.concat(chunks, received), ended);
      } catch (err) {
        return done(fail(`sent a malformed HTTP answer (${(err as Error).message})`, err));
      }
      if (res) answer(res);
      else if (ended) done(fail('closed the connection before answering'));
    };
    socket.once('connect', () => {
      connected = true;
      // One request per process (`Connection: close`: no keep-alive socket outlives the exchange). No
      // half-close after it: an HTTP server takes a FIN as the client giving up and drops the request.
      const head =
        `POST ${CMD_ADD_PATH} HTTP/1.1\r\nHost: unix\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n`;
      socket.write(Buffer.concat([Buffer.from(head, 'latin1'), body]));
    });
    socket.on('data', (chunk: Buffer) => {
      received += chunk.length;
      if (received > MAX_RESPONSE_BYTES) return done(fail(`sent more than ${MAX_RESPONSE_BYTES} bytes without finishing its answer`));
      chunks.push(chunk);
      parse(false);
    });
    socket.on('end', () => parse(true));
    // Reached means connected: an error before that (ENOENT, ECONNREFUSED) is an agent that is not there.
    socket.on('error', (err: NodeJS.ErrnoException) =>
      done(fail(connected ? `broke off the exchange (${err.code ?? err.message})` : `is unreachable (${err.code ?? err.message})`, err)),
    );
    socket.on('close', () => parse(true));
  });
}

function outcomeOf(body: string): CmdAddAnswer['outcome'] | undefined {
  if (body === 'pod captured') return 'captured';
  if (body === 'pod not enrolled') return 'not-enrolled';
  return undefined;
}
