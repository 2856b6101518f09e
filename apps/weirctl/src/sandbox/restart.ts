/**
 * `weirctl sandbox restart NODE ztunnel|cni-agent`: what a DaemonSet does after a crash or a
 * `kubectl delete pod`. The running process (if any) gets SIGTERM, a new one starts with the same flags and
 * environment as `up` gives it, and the command returns once the node's enrolled pods are served again.
 */
import { Topology } from '@weir/topology';
import { sandboxFiles, startAgent, startZtunnel, waitForCapture, type ZtunnelSource } from './components.js';
import { hasCaptureRules, requireState, SandboxError, type SandboxLocation } from './sandbox.js';
import { isEnrolled } from './spec.js';
import { writeSandboxState, type SandboxState } from './state.js';

export type RestartComponent = 'ztunnel' | 'cni-agent';

/** How long a stopping ztunnel may drain (its default termination deadline is 5 s) before SIGKILL. */
const STOP_TIMEOUT_MS = 10_000;

export async function sandboxRestart(where: SandboxLocation, nodeName: string, component: RestartComponent, say: (line: string) => void): Promise<void> {
  const state = await requireState(where);
  const wired = state.nodes.find((n) => n.name === nodeName);
  if (!wired) throw new SandboxError(`no node ${nodeName} (nodes: ${state.nodes.map((n) => n.name).join(', ')})`);
  const binary = component === 'ztunnel' ? 'weir-ztunnel' : 'weir-cni-agent';
  const info = state.components.find((c) => c.name === binary);
  if (!info?.present || info.path === undefined) throw new SandboxError(`${binary} cannot be started: ${info?.detail ?? 'not located by up'}`);
  const started = Date.now();
  const topology = await Topology.attach(state.topologyStateDir);
  const node = topology.node(nodeName);
  const running = (name: string | undefined): boolean => name !== undefined && topology.process(name)?.running === true;
  try {
    const old = topology.process((component === 'ztunnel' ? wired.ztunnelProcess : wired.agentProcess) ?? '');
    if (old?.running) {
      say(`${nodeName}: stopping ${binary} (pid ${old.pid})`);
      await old.stop('SIGTERM', STOP_TIMEOUT_MS);
    }
    const files = sandboxFiles(where.dir);
    if (component === 'ztunnel') {
      // Ready means the agent's snapshot arrived: only worth waiting for while an agent runs to send it.
      const agentUp = running(wired.agentProcess);
      wired.ztunnelProcess = await startZtunnel(node, info.path, files, ztunnelSource(state), wired, agentUp, say);
      if (!agentUp) say(`${nodeName}: weir-cni-agent is not running: ztunnel gets no pods (and is not ready) until it does: weirctl sandbox restart ${nodeName} cni-agent`);
    } else {
      const plugin = state.components.find((c) => c.name === 'weir-cni');
      wired.agentProcess = await startAgent(node, info.path, plugin?.present ? plugin.path : undefined, files, wired, say);
    }
    wired.notes = wired.notes.filter((note) => !note.startsWith(`${binary} is not running`));
    await writeSandboxState(where.dir, state);
    // As `up`: every enrolled pod of the node has its rules and, with both running, ztunnel is ready again.
    const enrolled = state.pods
      .filter((spec) => spec.node === nodeName && isEnrolled(spec, state.namespaces.find((n) => n.name === spec.namespace)))
      .flatMap((spec) => topology.pod(spec.namespace, spec.name) ?? []);
    await waitForCapture(node, wired, enrolled, (pod) => hasCaptureRules(pod.netnsPath));
  } finally {
    // The new process outlives this command.
    for (const proc of topology.processes) proc.unref();
  }
  const pid = topology.process((component === 'ztunnel' ? wired.ztunnelProcess : wired.agentProcess) ?? '')?.pid;
  const served = running(wired.agentProcess) && running(wired.ztunnelProcess);
  say(`${nodeName}: ${binary} restarted (pid ${pid ?? '?'}) after ${((Date.now() - started) / 1000).toFixed(1)} s${served ? '; the node serves its enrolled pods again' : ''}`);
}

function ztunnelSource(state: SandboxState): ZtunnelSource {
  const cp = state.controlPlane;
  return cp.mode === 'local' ? { mode: 'local' } : { mode: 'xds', address: cp.address, hostname: cp.hostname, rootCa: cp.rootCa, tokenFile: cp.tokenFile };
}
