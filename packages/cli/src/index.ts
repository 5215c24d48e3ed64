export { buildProgram, main } from './main.js';
export { Lab, VIGIL_BIN, labVmTag, type LabOptions, type HostReport } from './lab/lab.js';
export { labPaths, labAddress, DEFAULT_LAB_DIR } from './lab/layout.js';
