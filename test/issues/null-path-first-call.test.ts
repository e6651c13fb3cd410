import { test } from 'tap'
import { createHttpClient, InvalidRequestError } from '../../plugin'
import { rejection } from '../helpers/upstream'

// A client's first call without options, with a path of null, was taken as already checked
// (the remembered last path started as null) and threw instead of rejecting.
test('a first call with a null path rejects with InvalidRequestError', async (t) => {
  const client = createHttpClient({ name: 'users', baseUrl: 'http://127.0.0.1:1' })
  t.teardown(() => client.close())
  let promise: Promise<unknown> | undefined
  t.doesNotThrow(() => { promise = client.get(null as unknown as string) })
  t.type(await rejection(promise as Promise<unknown>), InvalidRequestError)
})
