import { once } from 'node:events'
import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import net, { type AddressInfo, type Socket } from 'node:net'
import Fastify from 'fastify'
import type { Test } from 'tap'
import resilientHttp, { type ClientOptions, createHttpClient, type CreateHttpClientOptions, type HttpClient } from '../../plugin'
import './fastify-types'

export interface Hit {
  method: string
  url: string
  headers: IncomingMessage['headers']
  body: string
}

export type Handler = (req: IncomingMessage, res: ServerResponse, hit: Hit, index: number) => void | Promise<void>

export interface Upstream {
  url: string
  port: number
  hits: Hit[]
  /** Connections accepted so far. */
  connections(): number
  server: http.Server
  close(): Promise<void>
}

/**
 * A real HTTP server on 127.0.0.1 (port 0) that records every request it
 * sees (with its body) and answers through `handler`.
 */
export async function startUpstream (handler: Handler): Promise<Upstream> {
  const hits: Hit[] = []
  const sockets = new Set<Socket>()
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const hit: Hit = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') }
      hits.push(hit)
      Promise.resolve(handler(req, res, hit, hits.length - 1)).catch((error: unknown) => {
        res.destroy(error as Error)
      })
    })
  })
  let connections = 0
  server.on('connection', (socket) => {
    connections++
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    hits,
    connections: () => connections,
    server,
    async close () {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}

export function sendJson (res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  const body = JSON.stringify(value)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers })
  res.end(body)
}

/** A port that was listening a moment ago and is now closed: connecting to it is refused. */
export async function refusedPort (): Promise<number> {
  const server = net.createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

/** What `promise` rejects with, or `null` when it resolves. */
export async function rejection (promise: PromiseLike<unknown>): Promise<unknown> {
  return Promise.resolve(promise).then(() => null, (error: unknown) => error)
}

/** `startUpstream(handler)`, closed when the test ends. */
export async function upstreamFor (t: Test, handler: Handler): Promise<Upstream> {
  const upstream = await startUpstream(handler)
  t.teardown(() => upstream.close())
  return upstream
}

/** `createHttpClient(options)`, closed when the test ends. */
export function clientFor (t: Test, options: CreateHttpClientOptions): HttpClient {
  const client = createHttpClient(options)
  t.teardown(() => client.close())
  return client
}

/** A client registered through the plugin on an app of its own, closed with the app when the test ends. */
export async function registeredClient (t: Test, name: string, options: ClientOptions): Promise<HttpClient> {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(resilientHttp, { clients: { [name]: options } })
  return app.httpClients[name]
}
