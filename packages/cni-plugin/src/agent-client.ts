import { request } from 'node:http';
import { CniPluginError } from './errors.js';
import { CMD_ADD_PATH, type CmdAddEventBody } from './event.js';

export interface PostCmdAddOptions {
  /** The agent's socket, `<cni_agent_run_dir>/pluginevent.sock`. */
  socketPath: string;
  /** Whole-exchange deadline; default 5000 ms. */
  timeoutMs?: number;
}

/**
 * POSTs a pod-add event to the node agent over its unix socket and resolves once the agent answers
 * 200 (it does so only after the pod is captured). Anything else rejects with ERR_CNI_AGENT_UNAVAILABLE
 * (CNI code 11, "try again later"), naming the socket.
 */
export function postCmdAdd(event: CmdAddEventBody, opts: PostCmdAddOptions): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const body = JSON.stringify(event);
  const fail = (what: string, cause?: unknown) =>
    new CniPluginError(
      'ERR_CNI_AGENT_UNAVAILABLE',
      `weir-cni ADD for pod ${event.PodNamespace}/${event.PodName} failed: node agent at ${opts.socketPath} ${what}; the pod is not started uncaptured, retry later`,
      { cause },
    );
  return new Promise<void>((resolve, reject) => {
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
          if (res.statusCode === 200) return done();
          const text = Buffer.concat(chunks).toString('utf8').trim().slice(0, 1024);
          done(fail(`answered ${res.statusCode}${text ? `: ${text}` : ''}`));
        });
      },
    );
    const timer = setTimeout(() => {
      done(fail(`did not answer within ${timeoutMs} ms`));
      req.destroy();
    }, timeoutMs);
    let settled = false;
    function done(err?: CniPluginError): void {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) reject(err);
      else resolve();
    }
    req.on('error', (err: NodeJS.ErrnoException) => done(fail(`is unreachable (${err.code ?? err.message})`, err)));
    req.end(body);
  });
}
