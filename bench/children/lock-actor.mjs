// One side of the cross-process lock hand-off, driven by the parent over IPC.
// argv[2]: JSON { lockPath, staleMs }. Messages from the parent:
//   { type: 'take' }            take the lock (it is free), answer { type: 'held' }
//   { type: 'release', holdMs } hold it `holdMs` more, then answer { type: 'released', atNs } where atNs is
//                               read on the shared monotonic clock just before release()
//   { type: 'wait' }            answer { type: 'waiting' }, wait for the lock; once it is ours answer
//                               { type: 'acquired', atNs } (read right after acquisition), then release it
//   { type: 'exit' }
import { distUrl, sleep } from '../lib/common.mjs';

const { lockPath, staleMs } = JSON.parse(process.argv[2]);
const { tryLock, waitForLock } = await import(distUrl('soft-lock.js'));
let held;

process.on('message', async (message) => {
  switch (message.type) {
    case 'take': {
      held = await tryLock(lockPath, staleMs);
      if (!held) throw new Error('lock-actor: the lock was not free');
      process.send({ type: 'held' });
      break;
    }
    case 'release': {
      await sleep(message.holdMs);
      const atNs = process.hrtime.bigint();
      await held.release();
      held = undefined;
      process.send({ type: 'released', atNs: atNs.toString() });
      break;
    }
    case 'wait': {
      const acquiring = waitForLock(lockPath, { key: 'handoff', staleMs, timeoutMs: 60_000 });
      process.send({ type: 'waiting' });
      const lock = await acquiring;
      const atNs = process.hrtime.bigint();
      await lock.release();
      process.send({ type: 'acquired', atNs: atNs.toString() });
      break;
    }
    case 'exit':
      process.disconnect();
      break;
  }
});
process.send({ type: 'ready' });
