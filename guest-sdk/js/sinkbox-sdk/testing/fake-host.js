// The fake host behind the stand-ins: which TestHost is current, and a
// wasi:filesystem subset over real directories (node:fs), shaped as the
// QuickJS backend shows it to a guest: u64 values are Numbers, a failed call
// throws an Error whose `payload` is the error code, and what would trap a
// real guest (a BigInt where WIT has a u64, a write over 4096 bytes) throws
// `GuestTrap`.

import fs from 'node:fs';
import path from 'node:path';

/** What would trap the guest in a real runtime (the instance is then dropped). */
export class GuestTrap extends Error {
  constructor(message) {
    super(message);
    this.name = 'GuestTrap';
  }
}

const CURRENT = Symbol.for('sinkbox-sdk.testing.current');

/** Makes `host` the one the stand-ins serve. */
export function setCurrentHost(host) {
  globalThis[CURRENT] = host;
}

/** Records a trap on the current host (a guest cannot catch it) and throws. */
export function trap(message) {
  const host = globalThis[CURRENT];
  if (host) host.trapped(message);
  throw new GuestTrap(message);
}

/** The current FakeHost, or undefined before the first one is made. */
export function currentHost() {
  return globalThis[CURRENT];
}

const ERROR_CODES = {
  EACCES: 'access',
  EAGAIN: 'would-block',
  EBADF: 'bad-descriptor',
  EBUSY: 'busy',
  EEXIST: 'exist',
  EFBIG: 'file-too-large',
  EINVAL: 'invalid',
  EIO: 'io',
  EISDIR: 'is-directory',
  ELOOP: 'loop',
  ENAMETOOLONG: 'name-too-long',
  ENOENT: 'no-entry',
  ENOSPC: 'insufficient-space',
  ENOTDIR: 'not-directory',
  ENOTEMPTY: 'not-empty',
  EPERM: 'not-permitted',
  EROFS: 'read-only',
  EXDEV: 'cross-device',
};

function wasiError(code) {
  const e = new Error(code);
  e.payload = code;
  return e;
}

function io(f) {
  try {
    return f();
  } catch (e) {
    if (e instanceof GuestTrap || (e && e.payload !== undefined)) throw e;
    throw wasiError((e && ERROR_CODES[e.code]) ?? 'io');
  }
}

function u64(value, what) {
  if (typeof value === 'bigint') trap(`${what} got a BigInt; the QuickJS backend traps on a BigInt where WIT has a u64 (pass a Number)`);
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) trap(`${what} got ${String(value)}, not a u64`);
  return value;
}

function bytes(value, what) {
  if (value instanceof Uint8Array) return value;
  if (Array.isArray(value) && value.every((b) => Number.isInteger(b) && b >= 0 && b <= 255)) return Uint8Array.from(value);
  trap(`${what} got ${Object.prototype.toString.call(value)}, not a list<u8>`);
}

function typeOf(st) {
  if (st.isFile()) return 'regular-file';
  if (st.isDirectory()) return 'directory';
  if (st.isSymbolicLink()) return 'symbolic-link';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  if (st.isCharacterDevice()) return 'character-device';
  if (st.isBlockDevice()) return 'block-device';
  return 'unknown';
}

function time(ms) {
  return { seconds: Math.floor(ms / 1000), nanoseconds: Math.floor((ms % 1000) * 1e6) };
}

function statOf(st) {
  return {
    type: typeOf(st),
    linkCount: Number(st.nlink),
    size: Number(st.size),
    dataAccessTimestamp: time(Number(st.atimeMs)),
    dataModificationTimestamp: time(Number(st.mtimeMs)),
    statusChangeTimestamp: time(Number(st.ctimeMs)),
  };
}

function hashOf(st) {
  // wasmtime hashes the device and inode; any function of both serves.
  return { upper: Number(st.dev), lower: Number(st.ino) };
}

/** Filesystem error code of a stream error; this fake has none. */
export function filesystemErrorCode(err) {
  return undefined;
}

class InputStream {
  constructor(fd, offset) {
    this.fd = fd;
    this.offset = offset;
  }

  blockingRead(len) {
    u64(len, 'input-stream.blocking-read');
    const buf = Buffer.alloc(Math.min(len, 65536));
    const n = io(() => fs.readSync(this.fd, buf, 0, buf.length, this.offset));
    if (n === 0 && len > 0) {
      const e = new Error('closed');
      e.payload = { tag: 'closed' };
      throw e;
    }
    this.offset += n;
    return new Uint8Array(buf.buffer, buf.byteOffset, n);
  }

  read(len) {
    return this.blockingRead(len);
  }
}

class OutputStream {
  constructor(host, descriptor, offset) {
    this.host = host;
    this.descriptor = descriptor;
    this.offset = offset;
  }

  checkWrite() {
    return 4096;
  }

  blockingWriteAndFlush(contents) {
    const data = bytes(contents, 'output-stream.blocking-write-and-flush');
    if (data.length > 4096) trap(`output-stream.blocking-write-and-flush got ${data.length} bytes; the limit is 4096`);
    this.host.mutating('write', this.descriptor.hostPath);
    io(() => fs.writeSync(this.descriptor.fd, data, 0, data.length, this.offset));
    this.offset += data.length;
  }

  write(contents) {
    this.blockingWriteAndFlush(contents);
  }

  blockingFlush() {}

  flush() {}
}

/** A wasi:filesystem descriptor over a real file or directory. */
export class Descriptor {
  constructor(host, hostPath, fd, flags) {
    this.host = host;
    this.hostPath = hostPath;
    this.fd = fd;
    this.flags = flags;
  }

  // Confines a path to this directory, as the WASI sandbox does.
  child(rel) {
    if (this.fd !== null) throw wasiError('not-directory');
    if (typeof rel !== 'string' || rel.startsWith('/')) throw wasiError('not-permitted');
    const norm = path.posix.normalize(rel === '' ? '.' : rel);
    if (norm === '..' || norm.startsWith('../')) throw wasiError('not-permitted');
    return path.join(this.hostPath, norm);
  }

  openAt(pathFlags, rel, openFlags = {}, flags = {}) {
    const target = this.child(rel);
    let existing = null;
    try {
      existing = (pathFlags && pathFlags.symlinkFollow ? fs.statSync : fs.lstatSync)(target);
    } catch (e) {
      if (e.code !== 'ENOENT') throw wasiError(ERROR_CODES[e.code] ?? 'io');
    }
    if (existing === null && !openFlags.create) throw wasiError('no-entry');
    if (existing !== null && openFlags.exclusive) throw wasiError('exist');
    if (existing !== null && existing.isSymbolicLink() && !(pathFlags && pathFlags.symlinkFollow)) throw wasiError('loop');
    if (existing !== null && existing.isDirectory()) {
      if (flags.write) throw wasiError('is-directory');
      return new Descriptor(this.host, target, null, flags);
    }
    if (openFlags.directory) throw wasiError(existing === null ? 'no-entry' : 'not-directory');
    if (existing === null) this.host.mutating('create', target);
    if (openFlags.truncate) this.host.mutating('truncate', target);
    const C = fs.constants;
    let mode = flags.write ? (flags.read ? C.O_RDWR : C.O_WRONLY) : C.O_RDONLY;
    if (openFlags.create) mode |= C.O_CREAT;
    if (openFlags.truncate) mode |= C.O_TRUNC;
    const fd = io(() => fs.openSync(target, mode, 0o644));
    this.host.track(fd);
    return new Descriptor(this.host, target, fd, flags);
  }

  getType() {
    return this.stat().type;
  }

  stat() {
    return statOf(io(() => (this.fd !== null ? fs.fstatSync(this.fd) : fs.statSync(this.hostPath))));
  }

  statAt(pathFlags, rel) {
    const target = this.child(rel);
    return statOf(io(() => (pathFlags && pathFlags.symlinkFollow ? fs.statSync : fs.lstatSync)(target)));
  }

  metadataHash() {
    return hashOf(io(() => (this.fd !== null ? fs.fstatSync(this.fd) : fs.statSync(this.hostPath))));
  }

  metadataHashAt(pathFlags, rel) {
    const target = this.child(rel);
    return hashOf(io(() => (pathFlags && pathFlags.symlinkFollow ? fs.statSync : fs.lstatSync)(target)));
  }

  readViaStream(offset) {
    u64(offset, 'descriptor.read-via-stream');
    if (this.fd === null) throw wasiError('is-directory');
    if (!this.flags.read) throw wasiError('bad-descriptor');
    return new InputStream(this.fd, offset);
  }

  writeViaStream(offset) {
    u64(offset, 'descriptor.write-via-stream');
    if (this.fd === null) throw wasiError('is-directory');
    if (!this.flags.write) throw wasiError('bad-descriptor');
    return new OutputStream(this.host, this, offset);
  }

  appendViaStream() {
    return this.writeViaStream(this.stat().size);
  }

  setSize(size) {
    u64(size, 'descriptor.set-size');
    if (this.fd === null) throw wasiError('is-directory');
    if (!this.flags.write) throw wasiError('bad-descriptor');
    this.host.mutating('truncate', this.hostPath);
    io(() => fs.ftruncateSync(this.fd, size));
  }

  syncData() {
    if (this.fd !== null) io(() => fs.fdatasyncSync(this.fd));
  }

  sync() {
    if (this.fd !== null) io(() => fs.fsyncSync(this.fd));
  }

  createDirectoryAt(rel) {
    const target = this.child(rel);
    this.host.mutating('create a directory', target);
    io(() => fs.mkdirSync(target));
  }

  renameAt(oldRel, newDescriptor, newRel) {
    const from = this.child(oldRel);
    const to = newDescriptor.child(newRel);
    this.host.mutating('rename', from);
    io(() => fs.renameSync(from, to));
  }

  unlinkFileAt(rel) {
    const target = this.child(rel);
    this.host.mutating('remove', target);
    io(() => fs.unlinkSync(target));
  }

  removeDirectoryAt(rel) {
    const target = this.child(rel);
    this.host.mutating('remove', target);
    io(() => fs.rmdirSync(target));
  }

  [Symbol.dispose]() {}
}
