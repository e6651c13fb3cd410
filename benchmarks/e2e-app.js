'use strict'

// The Fastify app of the end-to-end run, in its own process:
//   node e2e-app.js <ours|undici> <upstream origin> <connections>
// GET /proxy calls the upstream's GET / and returns its JSON body.
//   ours    our plugin, request-id propagation on, genReqId: requestIdGenerator()
//   undici  a plain Fastify app calling an undici Pool with the same settings
// Sends { port } once listening.

const Fastify = require('fastify')
const { Pool } = require('undici')

async function ours (origin, connections) {
  const resilientHttp = require('..')
  const app = Fastify({ genReqId: resilientHttp.requestIdGenerator() })
  await app.register(resilientHttp, {
    clients: { upstream: { baseUrl: origin, pool: { connections, pipelining: 1 } } }
  })
  app.get('/proxy', async function proxy (request) {
    const res = await request.server.httpClients.upstream.get('/')
    return res.json()
  })
  return app
}

async function undici (origin, connections) {
  const app = Fastify()
  const pool = new Pool(origin, { connections, pipelining: 1 })
  app.addHook('onClose', () => pool.close())
  app.get('/proxy', async function proxy () {
    const { body } = await pool.request({ method: 'GET', path: '/' })
    return body.json()
  })
  return app
}

async function main () {
  const [variant, origin, connections] = process.argv.slice(2)
  const build = { ours, undici }[variant]
  if (build === undefined) throw new Error(`unknown variant ${variant}`)
  const app = await build(origin, Number(connections))
  await app.listen({ port: 0, host: '127.0.0.1' })
  process.send({ port: app.server.address().port })
  const stop = () => app.close().finally(() => process.exit(0))
  process.once('SIGTERM', stop)
  process.once('disconnect', stop)
}

main().catch((error) => {
  process.send({ error: error?.stack ?? String(error) })
  process.exitCode = 1
})
