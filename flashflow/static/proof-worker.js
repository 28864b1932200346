// Flash Flow buyer page: the proof of work a waiting room may ask of a join, solved off the
// page's thread. Asked {saleId, userId, bits}, it answers {nonce}: the first nonce, counting
// from 0, whose sha256("saleId:userId:nonce") starts with `bits` zero bits; or {error}.

/** Whether `bytes` start with `bits` zero bits. */
function startsWithZeroBits(bytes, bits) {
  let left = bits;
  for (const byte of bytes) {
    if (left <= 0) return true;
    if (left < 8) return (byte >> (8 - left)) === 0;
    if (byte !== 0) return false;
    left -= 8;
  }
  return left <= 0;
}

self.onmessage = async ({ data: { saleId, userId, bits } }) => {
  if (!self.crypto || !self.crypto.subtle) {  // only in a secure context (https, localhost)
    self.postMessage({ error: "This browser cannot compute sha256 here." });
    return;
  }
  const encoder = new TextEncoder();
  for (let nonce = 0; ; nonce += 1) {
    const text = encoder.encode(`${saleId}:${userId}:${nonce}`);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", text));
    if (startsWithZeroBits(digest, bits)) {
      self.postMessage({ nonce: String(nonce) });
      return;
    }
  }
};
