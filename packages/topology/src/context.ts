import type { Logger } from './logger.js';
import type { SpawnOptions, SupervisedProcess } from './process.js';
import type { TopologyState } from './state.js';

/** What nodes and pods need from their topology; keeps Topology's own surface public-only. */
export interface TopologyContext {
  readonly state: TopologyState;
  readonly logger: Logger;
  save(): Promise<void>;
  /** Run a mutation: refused once destroy() began; destroy() waits for those in flight. */
  operation<T>(fn: () => Promise<T>): Promise<T>;
  spawn(options: SpawnOptions): Promise<SupervisedProcess>;
  /** Running processes started in a netns (by path). */
  processesIn(netnsPath: string): SupervisedProcess[];
}
