import { test } from 'tap'
import { ResponseTooLargeError } from '../lib/errors'
import { lineSplitter, NdjsonParser } from '../lib/streaming/ndjson-parser'
import { SseParser } from '../lib/streaming/sse-parser'
import type { BodyParser } from '../lib/streaming/stream-iterator'

const details = { clientName: 'unit', method: 'GET', path: '/' }

/** Feeds `chunks` one by one as the stream does and collects what comes out, then the error if one ends it. */
function run<T> (parser: BodyParser<T>, chunks: Array<string | Buffer>): { items: T[], error: unknown } {
  const items: T[] = []
  try {
    for (const chunk of chunks) {
      for (let item = parser.take(); item !== undefined; item = parser.take()) items.push(item)
      parser.feed(typeof chunk === 'string' ? Buffer.from(chunk) : chunk)
    }
    for (let item = parser.take(); item !== undefined; item = parser.take()) items.push(item)
    const last = parser.finish()
    if (last !== undefined) items.push(last)
    return { items, error: null }
  } catch (error) {
    return { items, error }
  }
}

test('lines: breaks, CRLF cut in two, multi-byte characters cut in two, no break at the end', async (t) => {
  const euro = Buffer.from('€')
  t.same(run(lineSplitter(details, 1024, false), ['a\r', '\nb\n\n', euro.subarray(0, 2), euro.subarray(2), 'x\nlast']).items, ['a', 'b', '', '€x', 'last'])
  t.same(run(lineSplitter(details, 1024, false), ['only\n']).items, ['only'])
  t.same(run(lineSplitter(details, 1024, false), ['a\rb\n']).items, ['a\rb'], 'a lone CR is no break outside SSE')
})

test('lines over the limit fail after the lines before them', async (t) => {
  const cases: Array<[Array<string>, string[]]> = [
    [['ok\n0123456789ABCDEF\nafter\n'], ['ok']],
    [['0123456789', 'ABCDEF'], []],
    [['01234567', '89ABCDEF\n'], []],
    [['a\nb\n0123456789ABCDEF\n'], ['a', 'b']]
  ]
  for (const [chunks, before] of cases) {
    const { items, error } = run(lineSplitter(details, 10, false), chunks)
    t.same(items, before, JSON.stringify(chunks))
    t.ok(error instanceof ResponseTooLargeError)
  }
  t.same(run(lineSplitter(details, 10, false), ['ok\n01234567', '89\n']), { items: ['ok', '0123456789'], error: null }, 'a line of exactly the limit is fine')
  const sse = run(new SseParser(details, 10), ['data: a\r\rdata: 0123456789\r\n'])
  t.same(sse.items.map((event) => event.data), ['a'])
  t.ok(sse.error instanceof ResponseTooLargeError, 'SSE lines end at CR too')
})

test('ndjson: blank lines are no records; the last line counts', async (t) => {
  t.same(run(new NdjsonParser(details, 1024), ['{"a":1}\n \n', '\t\n{"a":2}\n  ']).items, [{ a: 1 }, { a: 2 }])
  t.same(run(new NdjsonParser(details, 1024), ['1\n2']).items, [1, 2])
  const { error } = run(new NdjsonParser(details, 1024), ['1\n{"a":']) as { error: { line: number } }
  t.equal(error.line, 2, 'a cut last line is a broken record')
})

test('events: a BOM, CR line ends, a CRLF cut in two, fields without a value', async (t) => {
  const bom = Buffer.from([0xEF, 0xBB, 0xBF])
  const { items } = run(new SseParser(details, 1024), [Buffer.concat([bom, Buffer.from('data: a\r')]), '\r', 'data\r\n', '\r\nevent\nid\ndata:b\n\n:c\n\nretry: 20\n\n'])
  t.same(items, [
    { event: 'message', data: 'a', id: undefined, retry: undefined },
    { event: 'message', data: '', id: undefined, retry: undefined },
    { event: 'message', data: 'b', id: '', retry: undefined }
  ])
  const parser = new SseParser(details, 1024)
  run(parser, ['id: 5\ndata: x\n\nid: 6\ndata: cut'])
  t.equal(parser.lastEventId, '5', 'the id of an unfinished block is not the last event id')
  parser.reset()
  t.same(run(parser, ['data: y\n\n']).items, [{ event: 'message', data: 'y', id: '5', retry: undefined }], 'a new connection starts from the last event id')
})

test('events: a field is read only when its whole name matches, then a colon or the end of the line', async (t) => {
  const { items } = run(new SseParser(details, 1024), [
    'datum: no\ndxta: no\nrexry: 5\ndat\nidentity: 9\nretrying: 5\nevents: no\nd\ne\ni\nr\ndata:x\nid:1\n\n',
    'data:\ndata:  two spaces\nevent:e\nretry:7\n\n',
    'data: 1\ndata: 2\n\n'
  ])
  t.same(items, [
    { event: 'message', data: 'x', id: '1', retry: undefined },
    { event: 'e', data: '\n two spaces', id: '1', retry: 7 },
    { event: 'message', data: '1\n2', id: '1', retry: undefined }
  ], 'names sharing a first letter ignored, no space or two after the colon, data lines joined')
})
