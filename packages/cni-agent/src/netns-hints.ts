import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';

/**
 * Remembers the netns path each captured pod came with (the CNI_NETNS of its ADD), so that a
 * restarted agent finds pods whose netns holds no process for the /proc scan to match.
 */
/**
 * How long a change waits for more before the file is written: a burst of captures rewrites it
 * once or twice instead of once per pod (each a write and a rename of every pod's hint). A hint
 * lost to a crash in that window only means a /proc scan after the restart.
 */
const WRITE_DELAY_MS = 500;

export class NetnsHints {
  private readonly map = new Map<string, string>();
  private writing: Promise<void> = Promise.resolve();
  /** Changes not written yet (a write is scheduled or queued). */
  private dirty = false;
  private timer: NodeJS.Timeout | undefined;
  /** The directory exists (created once, not on every write of a burst). */
  private dirReady = false;

  constructor(
    private readonly file: string | undefined,
    private readonly delayMs = WRITE_DELAY_MS,
  ) {}

  async load(): Promise<void> {
    if (!this.file) return;
    try {
      const data = JSON.parse(await readFile(this.file, 'utf8')) as unknown;
      if (data && typeof data === 'object') {
        for (const [uid, path] of Object.entries(data)) if (typeof path === 'string') this.map.set(uid, path);
      }
    } catch {
      // Missing or torn file: the /proc scan remains.
    }
  }

  get(uid: string): string | undefined {
    return this.map.get(uid);
  }

  set(uid: string, path: string | undefined): void {
    if (path === undefined || path.startsWith('/proc/')) {
      if (!this.map.delete(uid)) return;
    } else {
      if (this.map.get(uid) === path) return;
      this.map.set(uid, path);
    }
    this.flush();
  }

  private flush(): void {
    if (!this.file || this.dirty) return;
    this.dirty = true;
    this.timer = setTimeout(() => this.writeNow(), this.delayMs);
    this.timer.unref?.();
  }

  /** Queues the write of what the map holds then (after a write in flight). */
  private writeNow(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const file = this.file;
    if (!file) return;
    this.writing = this.writing.then(async () => {
      this.dirty = false;
      const tmp = `${file}.${process.pid}.tmp`;
      try {
        if (!this.dirReady) {
          await mkdir(dirname(file), { recursive: true });
          this.dirReady = true;
        }
        await writeFile(tmp, JSON.stringify(Object.fromEntries(this.map)), { mode: 0o600 });
        await rename(tmp, file);
      } catch {
        // Best effort: a lost hint only means a /proc scan after restart. Recreate the directory next time.
        this.dirReady = false;
      }
    });
  }

  /** Resolves once every change so far is written (a scheduled write runs now). */
  async flushed(): Promise<void> {
    if (this.timer !== undefined) this.writeNow();
    await this.writing;
  }
}
