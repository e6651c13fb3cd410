/** Chunks smaller than this are gathered into one write of up to this size. */
export const COALESCE_BYTES = 64 * 1024

/**
 * `chunks` with the small ones gathered: a multipart body comes as many
 * small pieces (each part's header, its value, a line break) and a socket
 * write per piece costs more than copying them. Holds at most
 * `COALESCE_BYTES` at a time; a chunk that large goes as it is, so a big
 * file is still streamed, not copied.
 */
export async function * coalesced (chunks: AsyncIterable<Uint8Array>, limit = COALESCE_BYTES): AsyncGenerator<Uint8Array> {
  let held: Uint8Array[] = []
  let size = 0
  for await (const chunk of chunks) {
    if (size > 0 && size + chunk.length > limit) {
      yield joined(held, size)
      held = []
      size = 0
    }
    if (chunk.length >= limit) {
      yield chunk
      continue
    }
    held.push(chunk)
    size += chunk.length
  }
  if (size > 0) yield joined(held, size)
}

function joined (chunks: Uint8Array[], size: number): Uint8Array {
  return chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size)
}
