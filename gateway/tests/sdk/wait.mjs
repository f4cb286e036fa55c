// Bounded waits and checks shared by the Node test scripts in this folder.

/** `promise`, or a rejection naming `what` once `ms` milliseconds have passed. */
export function within(promise, what, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Throw `what` unless `cond` holds. */
export function check(cond, what) {
  if (!cond) throw new Error(what);
}
