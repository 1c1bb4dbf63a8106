// Stand-in for `wasi:filesystem/types`.
import { Descriptor, filesystemErrorCode } from '../fake-host.js';

export { Descriptor, filesystemErrorCode };
export default { Descriptor, filesystemErrorCode };
