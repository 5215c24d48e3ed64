export { buildProgram, main } from './main.js';
export {
  Lab,
  LabUsageError,
  LAB_ISOLATION_RESPONSES,
  VIGIL_BIN,
  labVmTag,
  netnsLabName,
  netnsLabSubnet,
  type LabOptions,
  type LabLibvirtState,
  type LabState,
  type LabNetnsState,
  type LabVmSpec,
  type LabIsolationResponse,
  type HostReport,
} from './lab/lab.js';
export { labPaths, labAddress, DEFAULT_LAB_DIR } from './lab/layout.js';
export { LabLibvirt, LAB_LIBVIRT_URI, LAB_DOMAIN_MEMORY_MB, labLibvirtProblem, qemuProcesses, type LabDomainRef, type LabQemu } from './lab/libvirt.js';
export {
  NetnsLab,
  NetnsCommandError,
  netnsSupport,
  netnsPrefix,
  hostNumber,
  runCommand,
  DEFAULT_NETNS_SUBNET,
  NETNS_TOOLS,
  NFT_TABLE,
  type NetnsLabOptions,
  type NetnsLabInfo,
  type NetnsSupport,
  type RunResult,
} from './lab/netns.js';
