'use strict'

// The Fastify app of the end-to-end run, in its own process:
//   node e2e-app.js <variant> <upstream origin> <connections>
// GET /proxy calls the upstream's GET / and returns its JSON body. Every
// variant takes its request id from the inbound x-request-id
// (genReqId: requestIdGenerator()), echoes it and forwards it upstream.
//   ours, ours A/A   our plugin at its defaults (A/A: the same, measured apart)
//   ours + deadline  the same with the plugin's `deadline: true`: the inbound
//                    x-request-timeout-ms is read and the ms left forwarded
//   raw undici       the same route on an undici Pool, the id passed by hand
// Sends { port } once listening.

const Fastify = require('fastify')
const { Pool } = require('undici')
const resilientHttp = require('..')

async function ours (origin, connections, pluginOptions = {}) {
  const app = Fastify({ genReqId: resilientHttp.requestIdGenerator() })
  await app.register(resilientHttp, {
    ...pluginOptions,
    clients: { upstream: { baseUrl: origin, pool: { connections, pipelining: 1 } } }
  })
  app.get('/proxy', async function proxy (request) {
    const res = await request.server.httpClients.upstream.get('/')
    return res.json()
  })
  return app
}

async function undici (origin, connections) {
  const app = Fastify({ genReqId: resilientHttp.requestIdGenerator() })
  const pool = new Pool(origin, { connections, pipelining: 1 })
  app.addHook('onClose', () => pool.close())
  app.get('/proxy', async function proxy (request, reply) {
    reply.header('x-request-id', request.id)
    const { body } = await pool.request({ method: 'GET', path: '/', headers: { 'x-request-id': request.id } })
    return body.json()
  })
  return app
}

const VARIANTS = {
  ours,
  'ours A/A': ours,
  'ours + deadline': (origin, connections) => ours(origin, connections, { deadline: true }),
  'raw undici': undici
}

async function main () {
  const [variant, origin, connections] = process.argv.slice(2)
  const build = VARIANTS[variant]
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
