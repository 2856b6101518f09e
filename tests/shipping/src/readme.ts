import { readFileSync } from 'node:fs';

/**
 * The package README's example: the first ```ts fenced block under a `##` heading that names an
 * example ("Example: …", "Embedding: …"). The README stays the source of truth; tests run it as is.
 */
export function readmeExample(readmePath: string): { heading: string; code: string } {
  const lines = readFileSync(readmePath, 'utf8').split('\n');
  let heading = '';
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (/^##\s/.test(line)) heading = line.replace(/^##\s+/, '');
    if (/^```(ts|typescript)\s*$/.test(line) && /example|embedding/i.test(heading)) {
      const end = lines.indexOf('```', i + 1);
      if (end < 0) throw new Error(`${readmePath}: unterminated code block after "## ${heading}"`);
      return { heading, code: lines.slice(i + 1, end).join('\n') };
    }
  }
  throw new Error(`${readmePath}: no \`\`\`ts block under a "## …Example…" or "## …Embedding…" heading`);
}
