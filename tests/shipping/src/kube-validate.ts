// Offline validation of rendered Kubernetes objects: kubernetes-models' compiled OpenAPI schemas
// (types, formats, required fields, enums) plus a strict walk over @kubernetes/client-node's generated
// type maps that rejects any field the API does not define (what `kubectl --validate=strict` does).
import * as k8s from '@kubernetes/client-node';

interface Attribute {
  name: string;
  baseName: string;
  type: string;
}
type ModelClass = { getAttributeTypeMap(): Attribute[] };

const models = k8s as unknown as Record<string, ModelClass | undefined>;

/** client-node's class name for apiVersion + kind, e.g. apps/v1 DaemonSet → V1DaemonSet. */
function modelName(apiVersion: string, kind: string): string {
  const version = apiVersion.split('/').pop()!;
  return `${version.charAt(0).toUpperCase()}${version.slice(1)}${kind}`;
}

function unknownFields(value: unknown, type: string, path: string, out: string[]): void {
  if (value === null || value === undefined) return;
  const arr = /^Array<(.+)>$/.exec(type);
  if (arr) {
    if (!Array.isArray(value)) out.push(`${path}: expected a list, got ${JSON.stringify(value)}`);
    else value.forEach((v, i) => unknownFields(v, arr[1]!, `${path}[${i}]`, out));
    return;
  }
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (map) {
    if (typeof value !== 'object' || Array.isArray(value)) out.push(`${path}: expected a map`);
    else for (const [k, v] of Object.entries(value)) unknownFields(v, map[1]!, `${path}.${k}`, out);
    return;
  }
  const model = models[type];
  if (!model || typeof model.getAttributeTypeMap !== 'function') return; // a scalar, IntOrString, any
  if (typeof value !== 'object' || Array.isArray(value)) {
    out.push(`${path}: expected an object of type ${type}, got ${JSON.stringify(value)}`);
    return;
  }
  const attrs = new Map(model.getAttributeTypeMap().map((a) => [a.baseName, a]));
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    const a = attrs.get(k);
    if (!a) out.push(`${path}.${k}: unknown field (not in ${type})`);
    else unknownFields(v, a.type, `${path}.${k}`, out);
  }
}

/** Problems with one object: schema violations and unknown fields; [] when it is valid. */
export async function validateObject(obj: Record<string, unknown>): Promise<string[]> {
  const apiVersion = String(obj.apiVersion ?? '');
  const kind = String(obj.kind ?? '');
  const where = `${kind}/${String((obj.metadata as { name?: string } | undefined)?.name ?? '?')}`;
  const group = apiVersion.includes('/') ? apiVersion : `v1`;
  let Model: { new (data: unknown): { validate(): void } };
  try {
    const mod = (await import(`kubernetes-models/${group}/${kind}`)) as Record<string, typeof Model>;
    Model = mod[kind]!;
  } catch (err) {
    return [`${where}: no schema for ${apiVersion} ${kind} (${(err as Error).message})`];
  }
  const problems: string[] = [];
  try {
    new Model(obj).validate();
  } catch (err) {
    problems.push(`${where}: ${(err as Error).message}`);
  }
  const name = modelName(apiVersion, kind);
  if (!models[name]) problems.push(`${where}: @kubernetes/client-node has no model ${name}`);
  else unknownFields(obj, name, where, problems);
  return problems;
}
