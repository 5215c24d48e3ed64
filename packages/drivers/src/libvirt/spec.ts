/**
 * A libvirt VM for Vigil: two files side by side on a datastore,
 *
 *   <datastore>/vms/<name>.json   Vigil's part (VM id `<datastore>:vms/<name>.json`):
 *                                 { "name", "domainXml", "restartPriority"?, "isolationResponse"? }
 *   <datastore>/vms/<name>.xml    the libvirt domain XML, as `virsh dumpxml` or virt-install
 *                                 write it; memory (`<memory>`) and vCPUs (`<vcpu>`) come from it
 *
 * `domainXml` is the XML's path relative to the JSON file's directory (no `..`, no absolute path:
 * it stays on the datastore). Vigil never writes the XML; it creates the domain from it with
 * another name and its own metadata element (domain-xml.ts).
 */
import { readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { type IsolationResponseSetting, type RestartPriority, type VmSpec } from '../types.js';
import { VM_NAME_RE, VmConfigError, validateHaSettings } from '../process/spec.js';
import { DomainXmlError, parseDomainXml, type DomainInfo } from './domain-xml.js';

export interface LibvirtVmConfig {
  name: string;
  /** Path of the domain XML, relative to the directory of the JSON file. */
  domainXml: string;
  restartPriority: RestartPriority;
  isolationResponse?: IsolationResponseSetting;
}

export interface LibvirtVm {
  config: LibvirtVmConfig;
  /** Absolute path of the domain XML on this host. */
  xmlPath: string;
  xml: string;
  domain: DomainInfo;
}

const KEYS = new Set(['name', 'domainXml', 'restartPriority', 'isolationResponse']);
const MAX_JSON_BYTES = 64 * 1024;
export const MAX_DOMAIN_XML_BYTES = 1024 * 1024;
const XML_PATH_RE = /^(?!\/)(?:[A-Za-z0-9_][A-Za-z0-9._-]*)(?:\/[A-Za-z0-9_][A-Za-z0-9._-]*)*\.xml$/;

/** Validate parsed JSON; every problem names its key. */
export function validateLibvirtVm(v: unknown, source: string): LibvirtVmConfig {
  const fail = (key: string, problem: string): never => {
    throw new VmConfigError(`${source}: ${key}: ${problem}`);
  };
  if (!v || typeof v !== 'object' || Array.isArray(v)) fail('(top level)', 'must be a JSON object');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (KEYS.has(k)) continue;
    if (k === 'command') fail(k, 'this is a process VM (the cluster runs the libvirt driver: a libvirt VM names its domain XML in "domainXml")');
    if (k === 'memoryMB' || k === 'cpus') fail(k, 'a libvirt VM takes its memory and vCPUs from its domain XML (<memory>, <vcpu>)');
    fail(k, 'unknown key');
  }
  if (typeof o.name !== 'string' || !VM_NAME_RE.test(o.name)) fail('name', 'must be 1-63 of A-Z a-z 0-9 . _ - starting with a letter or digit');
  if (typeof o.domainXml !== 'string' || !XML_PATH_RE.test(o.domainXml) || o.domainXml.split('/').some((s) => s === '.' || s === '..') || o.domainXml.length > 512) {
    fail('domainXml', 'must be the path of the domain XML relative to this file\'s directory, ending in .xml (A-Z a-z 0-9 . _ - and /, no ..)');
  }
  const { restartPriority: prio, isolationResponse: iso } = validateHaSettings(o, fail);
  return {
    name: o.name as string,
    domainXml: o.domainXml as string,
    restartPriority: prio as RestartPriority,
    ...(iso ? { isolationResponse: iso as IsolationResponseSetting } : {}),
  };
}

async function readSmall(path: string, max: number): Promise<string> {
  const st = await stat(path);
  if (!st.isFile()) throw new VmConfigError(`${path}: not a regular file`);
  if (st.size > max) throw new VmConfigError(`${path}: larger than ${max} bytes`);
  return readFile(path, 'utf8');
}

/** Read and validate a libvirt VM: its JSON file, then the domain XML it names. */
export async function readLibvirtVm(path: string): Promise<LibvirtVm> {
  const text = await readSmall(path, MAX_JSON_BYTES);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new VmConfigError(`${path}: not valid JSON (${(err as Error).message})`);
  }
  const config = validateLibvirtVm(json, path);
  const xmlPath = join(dirname(path), config.domainXml);
  let xml: string;
  try {
    xml = await readSmall(xmlPath, MAX_DOMAIN_XML_BYTES);
  } catch (err) {
    if (err instanceof VmConfigError) throw new VmConfigError(`${path}: domainXml: ${err.message}`);
    throw new VmConfigError(`${path}: domainXml: cannot read ${xmlPath}: ${(err as Error).message}`);
  }
  let domain: DomainInfo;
  try {
    domain = parseDomainXml(xml);
  } catch (err) {
    if (err instanceof DomainXmlError) throw new VmConfigError(`${xmlPath}: ${err.message}`);
    throw err;
  }
  return { config, xmlPath, xml, domain };
}

export function libvirtSpecOf(id: string, path: string, vm: LibvirtVm): VmSpec {
  return {
    id,
    name: vm.config.name,
    datastore: id.slice(0, id.indexOf(':')),
    path,
    memoryMB: vm.domain.memoryMB,
    cpus: vm.domain.cpus,
    restartPriority: vm.config.restartPriority,
    ...(vm.config.isolationResponse ? { isolationResponse: vm.config.isolationResponse } : {}),
    sourceFiles: [vm.xmlPath],
  };
}
