/**
 * Just enough of a libvirt domain XML for Vigil: a small, strict scanner (no DTD, no external
 * entities) that finds the elements Vigil reads (`<name>`, `<uuid>`, `<memory>`, `<vcpu>`,
 * `<metadata>`, `<devices><watchdog>`), and a rewrite that changes only the domain's `<name>` and
 * adds Vigil's metadata element, leaving every other byte of the operator's XML as it was.
 * libvirt itself validates the rest when the domain is created.
 */

/** Namespace of Vigil's element in a domain's `<metadata>` (libvirt requires one per application). */
export const VIGIL_XML_NS = 'urn:x-vigil:libvirt:vm:1';

export class DomainXmlError extends Error {}

interface Element {
  name: string;
  attrs: Record<string, string>;
  depth: number;
  /** Offsets: `<` of the start tag, just after its `>`, `<` of the end tag, just after the end. */
  start: number;
  contentStart: number;
  contentEnd: number;
  end: number;
  parent: Element | null;
  selfClosing: boolean;
}

const NAME = /[A-Za-z_][A-Za-z0-9._:-]*/y;

function decodeEntities(s: string, where: string): string {
  return s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);|&/g, (m, ent: string | undefined) => {
    if (!ent) throw new DomainXmlError(`${where}: a bare & (write &amp;)`);
    if (ent === 'lt') return '<';
    if (ent === 'gt') return '>';
    if (ent === 'amp') return '&';
    if (ent === 'quot') return '"';
    if (ent === 'apos') return "'";
    if (ent.startsWith('#x')) return String.fromCodePoint(parseInt(ent.slice(2), 16));
    if (ent.startsWith('#')) return String.fromCodePoint(parseInt(ent.slice(1), 10));
    throw new DomainXmlError(`${where}: unknown entity ${m}`);
  });
}

export function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

/** Every element of the document, in document order (a strict, non-validating scan). */
function scan(xml: string): Element[] {
  const out: Element[] = [];
  const stack: Element[] = [];
  let i = 0;
  let rootSeen = false;
  const fail = (what: string): never => {
    const line = xml.slice(0, i).split('\n').length;
    throw new DomainXmlError(`line ${line}: ${what}`);
  };
  while (i < xml.length) {
    const lt = xml.indexOf('<', i);
    if (lt < 0) {
      if (stack.length > 0 || xml.slice(i).trim() !== '') fail('text after the end of the document or an unclosed element');
      break;
    }
    if (stack.length === 0 && xml.slice(i, lt).trim() !== '') fail('text outside the root element');
    i = lt;
    if (xml.startsWith('<!--', i)) {
      const e = xml.indexOf('-->', i + 4);
      if (e < 0) fail('unterminated comment');
      i = e + 3;
      continue;
    }
    if (xml.startsWith('<?', i)) {
      const e = xml.indexOf('?>', i + 2);
      if (e < 0) fail('unterminated processing instruction');
      i = e + 2;
      continue;
    }
    if (xml.startsWith('<![CDATA[', i)) {
      if (stack.length === 0) fail('CDATA outside the root element');
      const e = xml.indexOf(']]>', i + 9);
      if (e < 0) fail('unterminated CDATA section');
      i = e + 3;
      continue;
    }
    if (xml.startsWith('<!', i)) fail('DOCTYPE and other declarations are not accepted');
    if (xml.startsWith('</', i)) {
      NAME.lastIndex = i + 2;
      const m = NAME.exec(xml);
      if (!m) fail('bad end tag');
      const top = stack.pop();
      if (!top || top.name !== m![0]) fail(`</${m![0]}> does not close <${top?.name ?? '(nothing)'}>`);
      const gt = xml.indexOf('>', NAME.lastIndex);
      if (gt < 0 || xml.slice(NAME.lastIndex, gt).trim() !== '') fail('bad end tag');
      top!.contentEnd = i;
      top!.end = gt + 1;
      i = gt + 1;
      continue;
    }
    NAME.lastIndex = i + 1;
    const m = NAME.exec(xml);
    if (!m) fail('bad start tag');
    if (stack.length === 0 && rootSeen) fail('a second root element');
    const name = m![0];
    let j = NAME.lastIndex;
    const attrs: Record<string, string> = {};
    let selfClosing = false;
    for (;;) {
      while (j < xml.length && /\s/.test(xml[j]!)) j++;
      if (xml.startsWith('/>', j)) {
        selfClosing = true;
        j += 2;
        break;
      }
      if (xml[j] === '>') {
        j += 1;
        break;
      }
      NAME.lastIndex = j;
      const a = NAME.exec(xml);
      if (!a) fail(`bad attribute in <${name}>`);
      j = NAME.lastIndex;
      while (/\s/.test(xml[j] ?? '')) j++;
      if (xml[j] !== '=') fail(`attribute ${a![0]} of <${name}> has no value`);
      j++;
      while (/\s/.test(xml[j] ?? '')) j++;
      const q = xml[j];
      if (q !== '"' && q !== "'") fail(`attribute ${a![0]} of <${name}> is not quoted`);
      const e = xml.indexOf(q!, j + 1);
      if (e < 0) fail(`unterminated attribute ${a![0]} of <${name}>`);
      const raw = xml.slice(j + 1, e);
      if (raw.includes('<')) fail(`< in attribute ${a![0]} of <${name}>`);
      if (a![0] in attrs) fail(`attribute ${a![0]} twice in <${name}>`);
      attrs[a![0]] = decodeEntities(raw, `attribute ${a![0]} of <${name}>`);
      j = e + 1;
    }
    const el: Element = { name, attrs, depth: stack.length, start: i, contentStart: j, contentEnd: j, end: j, parent: stack[stack.length - 1] ?? null, selfClosing };
    out.push(el);
    if (stack.length === 0) rootSeen = true;
    if (!selfClosing) stack.push(el);
    i = j;
  }
  if (stack.length > 0) fail(`<${stack[stack.length - 1]!.name}> is not closed`);
  if (!rootSeen) fail('no root element');
  return out;
}

/** What Vigil reads from a domain XML. */
export interface DomainInfo {
  /** `<domain type=...>`: kvm, qemu, ... */
  type: string;
  name: string;
  uuid: string | null;
  /** `<memory>` rounded up to MiB. */
  memoryMB: number;
  /** `<vcpu>` (the maximum the domain may use). */
  cpus: number;
  /** Models of the `<watchdog>` devices. */
  watchdogs: { model: string; action: string }[];
  /** Vigil's metadata element, if the XML carries one (a `virsh dumpxml` of a running Vigil domain). */
  vigil: Record<string, string> | null;
}

const UNITS: Record<string, number> = {
  b: 1, bytes: 1,
  KB: 1e3, k: 1024, KiB: 1024,
  MB: 1e6, M: 1024 ** 2, MiB: 1024 ** 2,
  GB: 1e9, G: 1024 ** 3, GiB: 1024 ** 3,
  TB: 1e12, T: 1024 ** 4, TiB: 1024 ** 4,
};

function text(xml: string, el: Element): string {
  const raw = el.selfClosing ? '' : xml.slice(el.contentStart, el.contentEnd);
  if (raw.includes('<')) throw new DomainXmlError(`<${el.name}> must contain only text`);
  return decodeEntities(raw, `<${el.name}>`).trim();
}

/** The namespace of an element, from its own or its ancestors' xmlns declarations. */
function namespaceOf(el: Element): string | null {
  const colon = el.name.indexOf(':');
  const key = colon >= 0 ? `xmlns:${el.name.slice(0, colon)}` : 'xmlns';
  for (let e: Element | null = el; e; e = e.parent) if (key in e.attrs) return e.attrs[key]!;
  return null;
}

function parse(xml: string): { els: Element[]; root: Element; info: DomainInfo } {
  const els = scan(xml);
  const root = els[0]!;
  if (root.name !== 'domain') throw new DomainXmlError(`the root element is <${root.name}>, not <domain>`);
  const child = (name: string, parent: Element = root) => {
    const found = els.filter((e) => e.parent === parent && e.name === name);
    if (found.length > 1) throw new DomainXmlError(`more than one <${name}> in <${parent.name}>`);
    return found[0] ?? null;
  };
  const nameEl = child('name');
  if (!nameEl) throw new DomainXmlError('no <name> in <domain>');
  const name = text(xml, nameEl);
  const uuidEl = child('uuid');
  const uuid = uuidEl ? text(xml, uuidEl) : null;
  const memEl = child('memory');
  if (!memEl) throw new DomainXmlError('no <memory> in <domain>: Vigil needs it to place the VM');
  const memText = text(xml, memEl);
  const unit = memEl.attrs.unit ?? 'KiB';
  const mult = UNITS[unit];
  if (mult === undefined) throw new DomainXmlError(`<memory unit='${unit}'>: unknown unit`);
  if (!/^[0-9]{1,20}$/.test(memText)) throw new DomainXmlError(`<memory>${memText}</memory>: not a whole number`);
  const memoryMB = Math.ceil((Number(memText) * mult) / 1024 ** 2);
  if (!(memoryMB >= 1 && memoryMB <= 16 * 1024 * 1024)) throw new DomainXmlError(`<memory>: ${memoryMB} MiB is outside 1 MiB..16 TiB`);
  const vcpuEl = child('vcpu');
  const vcpuText = vcpuEl ? text(xml, vcpuEl) : '1';
  if (!/^[0-9]{1,5}$/.test(vcpuText) || Number(vcpuText) < 1 || Number(vcpuText) > 1024) throw new DomainXmlError(`<vcpu>${vcpuText}</vcpu>: must be a whole number from 1 to 1024`);
  const devices = child('devices');
  const watchdogs = devices ? els.filter((e) => e.parent === devices && e.name === 'watchdog').map((e) => ({ model: e.attrs.model ?? '', action: e.attrs.action ?? 'reset' })) : [];
  const metadata = child('metadata');
  let vigil: Record<string, string> | null = null;
  for (const e of metadata ? els.filter((x) => x.parent === metadata) : []) {
    const local = e.name.slice(e.name.indexOf(':') + 1);
    if (local === 'vm' && namespaceOf(e) === VIGIL_XML_NS) vigil = Object.fromEntries(Object.entries(e.attrs).filter(([k]) => k !== 'xmlns' && !k.startsWith('xmlns:')));
  }
  return { els, root, info: { type: root.attrs.type ?? '', name, uuid, memoryMB, cpus: Number(vcpuText), watchdogs, vigil } };
}

/** Read what Vigil needs from a domain XML; throws DomainXmlError naming the problem. */
export function parseDomainXml(xml: string): DomainInfo {
  return parse(xml).info;
}

/**
 * The XML to create on this host: the same document with `<name>` replaced by `name` and Vigil's
 * metadata element (`<vigil:vm cluster=... host=... daemon=... vm=.../>`) added to `<metadata>`.
 * Refuses an XML that already carries Vigil's metadata (it would be ambiguous).
 */
export function prepareDomainXml(xml: string, name: string, meta: Record<string, string>): string {
  const { els, root, info } = parse(xml);
  if (info.vigil || xml.includes(VIGIL_XML_NS)) throw new DomainXmlError(`the domain XML already carries Vigil's metadata (${VIGIL_XML_NS}): remove it (a virsh dumpxml of a running Vigil domain?)`);
  const attrs = Object.entries(meta)
    .map(([k, v]) => ` ${k}="${escapeXml(v)}"`)
    .join('');
  const element = `<vigil:vm xmlns:vigil="${VIGIL_XML_NS}"${attrs}/>`;
  const nameEl = els.find((e) => e.parent === root && e.name === 'name')!;
  const metadata = els.find((e) => e.parent === root && e.name === 'metadata');
  // Edits from the end of the document backwards, so earlier offsets stay valid.
  const edits: { at: number; end: number; text: string }[] = [{ at: nameEl.start, end: nameEl.end, text: `<name>${escapeXml(name)}</name>` }];
  if (!metadata) edits.push({ at: root.contentEnd, end: root.contentEnd, text: `  <metadata>${element}</metadata>\n` });
  else if (metadata.selfClosing) edits.push({ at: metadata.start, end: metadata.end, text: `<metadata>${element}</metadata>` });
  else edits.push({ at: metadata.contentStart, end: metadata.contentStart, text: element });
  edits.sort((a, b) => b.at - a.at);
  let out = xml;
  for (const e of edits) out = out.slice(0, e.at) + e.text + out.slice(e.end);
  return out;
}
