import { request } from 'node:http';
import { CniPluginError } from './errors.js';
import { CMD_ADD_PATH, type CmdAddEventBody } from './event.js';

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

/**
 * POSTs a pod-add event to the node agent over its unix socket and resolves with its 200 answer (the
 * agent answers 200 only after capturing the pod, or having found it not enrolled). Anything else
 * rejects with a CniPluginError (CNI code 11, "try again later") naming the socket: code
 * ERR_CNI_AGENT_UNREACHABLE when no connection was established (no socket file, nobody listening),
 * ERR_CNI_AGENT_UNAVAILABLE when the agent was reached but answered non-200 (or 200 with another body), broke off, or missed the deadline.
 */
export function postCmdAdd(event: CmdAddEventBody, opts: PostCmdAddOptions): Promise<CmdAddAnswer> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const body = JSON.stringify(event);
  let connected = false;
  const fail = (what: string, cause?: unknown, reached = connected) =>
    new CniPluginError(
      reached ? 'ERR_CNI_AGENT_UNAVAILABLE' : 'ERR_CNI_AGENT_UNREACHABLE',
      `weir-cni ADD for pod ${event.PodNamespace}/${event.PodName} failed: node agent at ${opts.socketPath} ${what}; the pod is not started uncaptured, retry later`,
      { cause },
    );
  return new Promise<CmdAddAnswer>((resolve, reject) => {
    const req = request(
      {
        socketPath: opts.socketPath,
        path: CMD_ADD_PATH,
        method: 'POST',
        // One request per process: no keep-alive socket may outlive the exchange.
        agent: false,
        headers: {
          'Content-Type': 'application/json',
          'Content-Length': Buffer.byteLength(body),
          Host: 'unix',
          Connection: 'close',
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => {
          if (chunks.reduce((n, b) => n + b.length, 0) < 64 * 1024) chunks.push(c);
        });
        res.on('error', (err) => done(fail(`broke off its answer: ${err.message}`, err)));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8').trim().slice(0, 1024);
          const outcome = res.statusCode === 200 ? outcomeOf(text) : undefined;
          if (outcome) return done(undefined, { outcome, body: text });
          // Any other 200 is ambiguous (a proxy, another agent): the pod may not be captured, so it fails closed.
          if (res.statusCode === 200) return done(fail(`answered 200 with an unknown body: ${text || '(empty)'}`));
          done(fail(`answered ${res.statusCode}${text ? `: ${text}` : ''}`));
        });
      },
    );
    const timer = setTimeout(() => {
      // A deadline is never "unreachable": something holds the socket, so the ADD fails rather than falling back.
      done(fail(connected ? `did not answer within ${timeoutMs} ms` : `accepted no connection within ${timeoutMs} ms`, undefined, true));
      req.destroy();
    }, timeoutMs);
    let settled = false;
    function done(err: CniPluginError | undefined, answer?: CmdAddAnswer): void {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) reject(err);
      else resolve(answer!);
    }
    // Reached means connected: an error before that (ENOENT, ECONNREFUSED) is an agent that is not there.
    req.on('socket', (socket) => socket.once('connect', () => (connected = true)));
    req.on('error', (err: NodeJS.ErrnoException) =>
      done(fail(connected ? `broke off the exchange (${err.code ?? err.message})` : `is unreachable (${err.code ?? err.message})`, err)),
    );
    req.end(body);
  });
}

function outcomeOf(body: string): CmdAddAnswer['outcome'] | undefined {
  if (body === 'pod captured') return 'captured';
  if (body === 'pod not enrolled') return 'not-enrolled';
  return undefined;
}
