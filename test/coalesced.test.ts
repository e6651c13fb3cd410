import { test } from 'tap'
import { coalesced } from '../lib/pipeline/coalesced'

async function * from (chunks: Uint8Array[]): AsyncGenerator<Uint8Array> {
  for (const chunk of chunks) yield chunk
}

async function collect (chunks: AsyncIterable<Uint8Array>): Promise<Uint8Array[]> {
  const out: Uint8Array[] = []
  for await (const chunk of chunks) out.push(chunk)
  return out
}

const bytes = (text: string): Buffer => Buffer.from(text)

test('small chunks are gathered up to the limit, in order; a chunk as large as the limit goes as it is', async (t) => {
  const big = Buffer.alloc(8, 'B')
  const out = await collect(coalesced(from([bytes('ab'), bytes('cd'), bytes('ef'), bytes('gh'), big, bytes('i'), bytes('jklmno'), bytes('pq'), bytes('r')]), 8))
  t.same(out.map((chunk) => Buffer.from(chunk).toString()), ['abcdefgh', 'BBBBBBBB', 'ijklmno', 'pqr'], 'never more than 8 bytes held, nothing reordered')
  t.equal(out[1], big, 'the large chunk is not copied')
  t.same(await collect(coalesced(from([]), 8)), [], 'nothing in, nothing out')
  const single = bytes('x')
  t.equal((await collect(coalesced(from([single]), 8)))[0], single, 'a lone small chunk is not copied either')
})

test('a failure of the source reaches the reader after what came before was held, not sent', async (t) => {
  async function * failing (): AsyncGenerator<Uint8Array> {
    yield bytes('a')
    throw new Error('disk gone')
  }
  await t.rejects(collect(coalesced(failing(), 8)), /disk gone/)
})
