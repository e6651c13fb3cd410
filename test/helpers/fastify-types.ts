import type { HttpClient } from '../../lib/api/http-client'

// The public types (types/index.d.ts) type `fastify.httpClients` for users;
// the tests import the sources, so they declare it here.
declare module 'fastify' {
  interface FastifyInstance {
    httpClients: Record<string, HttpClient>
  }
}
