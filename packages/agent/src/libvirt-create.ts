/**
 * `vigil vm create` in a cluster that runs the libvirt driver: write a libvirt VM on a datastore,
 * in the format the driver reads (packages/drivers/src/libvirt/spec.ts, docs/libvirt.md):
 *
 *   <datastore>/vms/<name>.xml    the domain XML: the operator's (`--domain-xml FILE`, sent in the
 *                                 request), or a small diskless domain (no disk, no NIC, no guest
 *                                 OS: a test domain that only runs its firmware)
 *   <datastore>/vms/<name>.json   { name, domainXml: "<name>.xml", restartPriority, isolationResponse? }
 *
 * The XML is written first and the JSON last, each with O_EXCL (never over an existing file), so
 * that a catalog scan never finds a JSON naming an XML that is not there yet.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DomainXmlError, escapeXml, MAX_DOMAIN_XML_BYTES, parseDomainXml, validateLibvirtVm, virsh } from '@vigil/drivers';

/** Memory of a generated diskless domain when `--memory` is not given, MiB. */
export const DISKLESS_DEFAULT_MEMORY_MB = 64;
export const DOMAIN_TYPES = ['kvm', 'qemu'] as const;
export type DomainType = (typeof DOMAIN_TYPES)[number];

/**
 * A diskless x86_64 domain: `memoryMB` MiB, `cpus` vCPUs, a serial console, nothing else. It boots
 * into its firmware, finds nothing to boot and idles there: enough to exercise placement, leases,
 * restarts and statistics, not a usable guest.
 */
export function disklessDomainXml(o: { name: string; uuid: string; memoryMB: number; cpus: number; type: DomainType }): string {
  return [
    `<domain type='${o.type}'>`,
    `  <name>${escapeXml(o.name)}</name>`,
    `  <uuid>${o.uuid}</uuid>`,
    `  <memory unit='MiB'>${o.memoryMB}</memory>`,
    `  <vcpu>${o.cpus}</vcpu>`,
    `  <os><type arch='x86_64' machine='pc'>hvm</type></os>`,
    `  <on_poweroff>destroy</on_poweroff>`,
    `  <on_reboot>restart</on_reboot>`,
    `  <on_crash>destroy</on_crash>`,
    `  <devices>`,
    `    <serial type='pty'/>`,
    `  </devices>`,
    `</domain>`,
    '',
  ].join('\n');
}

/**
 * Whether libvirtd on `uri` can run x86_64 `<domain type='kvm'>` (it lists it in its
 * capabilities when /dev/kvm is usable); 'qemu' (TCG, slower) otherwise or if it cannot tell.
 */
export async function defaultDomainType(uri: string, timeoutMs = 10_000): Promise<DomainType> {
  try {
    const caps = await virsh(uri, ['capabilities'], timeoutMs);
    for (const guest of caps.split('<guest>').slice(1)) {
      const body = guest.slice(0, guest.indexOf('</guest>'));
      if (/<os_type>hvm<\/os_type>/.test(body) && /<arch name=['"]x86_64['"]/.test(body) && /<domain type=['"]kvm['"]/.test(body)) return 'kvm';
    }
  } catch {
    /* cannot tell: TCG works everywhere QEMU does */
  }
  return 'qemu';
}

export class LibvirtCreateError extends Error {}

function has(v: unknown): boolean {
  return v !== undefined && v !== null;
}

/**
 * Write the VM's two files in `<base>/vms/`. `req` is the control request of `vigil vm create`:
 * name, datastore, priority, isolationResponse, and either domainXml (the XML's text) or
 * memoryMB / cpus / domainType for a generated diskless domain. Returns the VM id.
 */
export async function createLibvirtVm(req: Record<string, unknown>, ds: string, base: string, uri: string, vmDir: string): Promise<{ id: string; file: string; xmlFile: string }> {
  const fail = (msg: string): never => {
    throw new LibvirtCreateError(msg);
  };
  if (has(req.command) || (Array.isArray(req.args) && req.args.length > 0) || has(req.env)) {
    fail('this cluster runs the libvirt driver: a VM is a domain XML, not a command. Drop the command after --, and give --domain-xml FILE (or nothing, for a small diskless test domain); see docs/libvirt.md');
  }
  const name = typeof req.name === 'string' ? req.name : '';
  const config = validateLibvirtVm(
    {
      name,
      domainXml: `${name}.xml`,
      restartPriority: req.priority ?? 'medium',
      ...(has(req.isolationResponse) ? { isolationResponse: req.isolationResponse } : {}),
    },
    'vm create',
  );
  let xml: string;
  if (has(req.domainXml)) {
    if (has(req.memoryMB) || has(req.cpus)) fail('--memory and --cpus do not go with --domain-xml: a libvirt VM takes them from its XML (<memory>, <vcpu>)');
    if (has(req.domainType)) fail('--domain-type is for the generated diskless domain; with --domain-xml the type is the XML\'s <domain type=...>');
    if (typeof req.domainXml !== 'string') fail('domainXml must be the text of the domain XML');
    xml = req.domainXml as string;
    if (Buffer.byteLength(xml) > MAX_DOMAIN_XML_BYTES) fail(`--domain-xml: larger than ${MAX_DOMAIN_XML_BYTES} bytes`);
    try {
      const info = parseDomainXml(xml);
      if (info.vigil) fail('--domain-xml: the XML carries Vigil\'s metadata element (a virsh dumpxml of a running Vigil domain?): remove the <vigil:vm .../> element from <metadata>');
    } catch (err) {
      if (err instanceof DomainXmlError) fail(`--domain-xml: ${err.message}`);
      throw err;
    }
  } else {
    const memoryMB = req.memoryMB ?? DISKLESS_DEFAULT_MEMORY_MB;
    if (typeof memoryMB !== 'number' || !Number.isInteger(memoryMB) || memoryMB < 16 || memoryMB > 1024 * 1024) fail('--memory: a diskless domain takes from 16 to 1048576 MiB');
    const cpus = req.cpus ?? 1;
    if (typeof cpus !== 'number' || !Number.isInteger(cpus) || cpus < 1 || cpus > 1024) fail('--cpus: must be an integer from 1 to 1024');
    let type: DomainType;
    if (has(req.domainType)) {
      if (!(DOMAIN_TYPES as readonly unknown[]).includes(req.domainType)) fail(`--domain-type must be ${DOMAIN_TYPES.join(' or ')}`);
      type = req.domainType as DomainType;
    } else {
      type = await defaultDomainType(uri);
    }
    xml = disklessDomainXml({ name: config.name, uuid: randomUUID(), memoryMB: memoryMB as number, cpus: cpus as number, type });
  }
  const dir = join(base, vmDir);
  await mkdir(dir, { recursive: true });
  const file = join(dir, `${config.name}.json`);
  const xmlFile = join(dir, config.domainXml);
  const exists = (err: unknown) => (err as NodeJS.ErrnoException).code === 'EEXIST';
  const taken = () => new LibvirtCreateError(`a VM named ${config.name} already exists on ${ds} (${file})`);
  if (await stat(file).then(() => true, () => false)) throw taken();
  try {
    await writeFile(xmlFile, xml, { flag: 'wx' });
  } catch (err) {
    if (exists(err)) fail(`${xmlFile} already exists on ${ds}: not written over (remove it, or choose another name)`);
    throw err;
  }
  try {
    await writeFile(file, JSON.stringify(config, null, 2) + '\n', { flag: 'wx' });
  } catch (err) {
    await rm(xmlFile, { force: true });
    if (exists(err)) throw taken();
    throw err;
  }
  return { id: `${ds}:${vmDir}/${config.name}.json`, file, xmlFile };
}
