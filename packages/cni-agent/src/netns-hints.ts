import { writeSync } from 'node:fs';
import { mkdir, open, readFile, rename, truncate, writeFile, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';

/** Journal lines beyond which the next write compacts them into the snapshot (at least this, or twice the hints). */
const COMPACT_MIN_LINES = 256;

/**
 * Remembers the netns path each captured pod came with (the CNI_NETNS of its ADD), so that a
 * restarted agent finds pods whose netns holds no process for the /proc scan to match (CRI-O
 * without an infra container before the first container starts; netns-only test and sandbox pods).
 *
 * Durable within one write of a capture, at the cost of one append: each change is a line appended
 * to `<file>.journal` at once (changes made while an append is in flight go in the next one, so a
 * burst costs a few appends, not a rewrite per pod); `<file>` holds a JSON snapshot the journal is
 * compacted into when it grows. Loading replays the journal over the snapshot; a torn last line
 * (a crash mid-append) is skipped.
 */
export class NetnsHints {
  private readonly map = new Map<string, string>();
  /** Journal lines not written yet. */
  private pending: string[] = [];
  private writing: Promise<void> = Promise.resolve();
  /** A write of `pending` is queued on `writing`. */
  private queued = false;
  private journal: FileHandle | undefined;
  private journalLines = 0;

  constructor(private readonly file: string | undefined) {}

  private get journalPath(): string {
    return `${this.file}.journal`;
  }

  async load(): Promise<void> {
    if (!this.file) return;
    try {
      const data = JSON.parse(await readFile(this.file, 'utf8')) as unknown;
      if (data && typeof data === 'object') {
        for (const [uid, path] of Object.entries(data)) if (typeof path === 'string') this.map.set(uid, path);
      }
    } catch {
      // Missing or torn snapshot: the journal and the /proc scan remain.
    }
    let text = '';
    try {
      text = await readFile(this.journalPath, 'utf8');
    } catch {
      return;
    }
    for (const line of text.split('\n')) {
      if (line === '') continue;
      this.journalLines++;
      let entry: unknown;
      try {
        entry = JSON.parse(line);
      } catch {
        continue;
      }
      if (entry === null || typeof entry !== 'object') continue;
      const { uid, netns } = entry as { uid?: unknown; netns?: unknown };
      if (typeof uid !== 'string') continue;
      if (typeof netns === 'string') this.map.set(uid, netns);
      else this.map.delete(uid);
    }
  }

  get(uid: string): string | undefined {
    return this.map.get(uid);
  }

  set(uid: string, path: string | undefined): void {
    if (path === undefined || path.startsWith('/proc/')) {
      if (!this.map.delete(uid)) return;
      this.record({ uid, netns: null });
    } else {
      if (this.map.get(uid) === path) return;
      this.map.set(uid, path);
      this.record({ uid, netns: path });
    }
  }

  private record(entry: { uid: string; netns: string | null }): void {
    if (!this.file) return;
    this.pending.push(`${JSON.stringify(entry)}\n`);
    if (this.queued) return;
    this.queued = true;
    this.writing = this.writing.then(() => this.writePending());
  }

  private async writePending(): Promise<void> {
    this.queued = false;
    const lines = this.pending;
    this.pending = [];
    if (lines.length === 0) return;
    try {
      if (this.journalLines + lines.length > Math.max(COMPACT_MIN_LINES, 2 * this.map.size)) {
        // The snapshot is the map now, which every line so far (these included) is already in.
        await this.compact();
        return;
      }
      this.journal ??= await this.openJournal();
      // A synchronous append: a line or a few to the page cache, cheaper on a busy agent's thread than
      // the thread-pool round trip of an asynchronous write (once per capture in a burst).
      const text = Buffer.from(lines.join(''));
      for (let off = 0; off < text.length; ) off += writeSync(this.journal.fd, text, off);
      this.journalLines += lines.length;
    } catch {
      // Kept for the next change's write (reopened then). Until one lands, a restart falls back to the
      // /proc scan, which finds a pod only if a process runs in its netns.
      this.pending = lines.concat(this.pending);
      await this.closeJournal();
    }
  }

  private async openJournal(): Promise<FileHandle> {
    await mkdir(dirname(this.journalPath), { recursive: true });
    const handle = await open(this.journalPath, 'a+', 0o600);
    try {
      // After a crash mid-append the last line is torn: end it, or the next line would be lost with it.
      const { size } = await handle.stat();
      if (size > 0) {
        const last = Buffer.alloc(1);
        await handle.read(last, 0, 1, size - 1);
        if (last[0] !== 0x0a) await handle.write('\n');
      }
      return handle;
    } catch (err) {
      await handle.close().catch(() => undefined);
      throw err;
    }
  }

  /** Snapshot first, then the journal emptied: a crash in between replays lines the snapshot already holds. */
  private async compact(): Promise<void> {
    const file = this.file as string;
    const tmp = `${file}.${process.pid}.tmp`;
    await mkdir(dirname(file), { recursive: true });
    await writeFile(tmp, JSON.stringify(Object.fromEntries(this.map)), { mode: 0o600 });
    await rename(tmp, file);
    await this.closeJournal();
    try {
      await truncate(this.journalPath, 0);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    this.journalLines = 0;
  }

  private async closeJournal(): Promise<void> {
    const handle = this.journal;
    this.journal = undefined;
    await handle?.close().catch(() => undefined);
  }

  /** Resolves once every change so far is written, and closes the journal (reopened by the next change). */
  async flushed(): Promise<void> {
    this.writing = this.writing.then(() => this.closeJournal());
    await this.writing;
  }
}
