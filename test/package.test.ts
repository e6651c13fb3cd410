import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { gunzipSync } from 'node:zlib'
import { test } from 'tap'
import { sendJson, startUpstream } from './helpers/upstream'

const execFileAsync = promisify(execFile)
const root = path.join(__dirname, '..')
const CHILD_TIMEOUT_MS = 120_000

interface Run {
  code: number
  stdout: string
  stderr: string
}

/** Runs a command to its end (killed past the timeout), whatever its exit code. */
async function run (command: string, args: string[], options: { cwd: string, env?: NodeJS.ProcessEnv }): Promise<Run> {
  try {
    const { stdout, stderr } = await execFileAsync(command, args, { ...options, timeout: CHILD_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024 })
    return { code: 0, stdout, stderr }
  } catch (error) {
    const failed = error as { code?: unknown, killed?: boolean, stdout?: string, stderr?: string }
    if (failed.killed === true || typeof failed.code !== 'number') throw error
    return { code: failed.code, stdout: failed.stdout ?? '', stderr: failed.stderr ?? '' }
  }
}

/** The entries of a gzipped tarball (ustar, as npm writes it): path → contents. */
function readTarball (gzipped: Buffer): Map<string, Buffer> {
  const tar = gunzipSync(gzipped)
  const files = new Map<string, Buffer>()
  const field = (block: Buffer, start: number, length: number): string => block.toString('utf8', start, start + length).replace(/\0.*$/s, '')
  let offset = 0
  while (offset + 512 <= tar.length) {
    const header = tar.subarray(offset, offset + 512)
    if (header.every((byte) => byte === 0)) break
    const name = field(header, 0, 100)
    const prefix = field(header, 345, 155)
    const size = parseInt(field(header, 124, 12).trim() || '0', 8)
    const type = field(header, 156, 1)
    offset += 512
    if (type === '0' || type === '') files.set(prefix === '' ? name : `${prefix}/${name}`, Buffer.from(tar.subarray(offset, offset + size)))
    offset += Math.ceil(size / 512) * 512
  }
  return files
}

const CONSUMER_TS = `import Fastify from 'fastify'
import resilientHttp, { createHttpClient, TimeoutError, type HttpClient, type HttpResponse, type ClientOptions } from 'fastify-resilient-http'

declare module 'fastify-resilient-http' {
  interface HttpClients {
    payments: HttpClient
  }
}

const payments: ClientOptions = { baseUrl: 'http://127.0.0.1:9/v1', timeout: 1000, retry: { maxAttempts: 2, jitter: 'none' }, circuitBreaker: false }
const app = Fastify()
await app.register(resilientHttp, { clients: { payments }, propagateHeaders: ['traceparent'] })

export async function charge (): Promise<number> {
  const res: HttpResponse = await app.httpClients.payments.get('/x', { query: { page: 2 }, timeout: 500 })
  const body = await res.raiseForStatus().json<{ amount: number }>()
  return body.amount
}

export function isTimeout (error: unknown): boolean {
  return error instanceof TimeoutError && error.kind === 'attempt'
}

const standalone: HttpClient = createHttpClient({ name: 'script', baseUrl: 'http://127.0.0.1:9' })
await standalone.close()
`

const CONSUMER_CTS = `import resilientHttp = require('fastify-resilient-http')
import Fastify = require('fastify')

const app = Fastify()
app.register(resilientHttp, { clients: { users: { baseUrl: 'http://127.0.0.1:9' } } })
const client: resilientHttp.HttpClient = resilientHttp.createHttpClient({ name: 'users', baseUrl: 'http://127.0.0.1:9' })
export const closed: Promise<void> = client.close()
export const plugin: typeof resilientHttp.default = resilientHttp.resilientHttp
`

const CONSUMER_BAD_TS = `import Fastify from 'fastify'
import resilientHttp, { type HttpClient } from 'fastify-resilient-http'

declare module 'fastify-resilient-http' {
  interface HttpClients {
    payments: HttpClient
  }
}

const app = Fastify()
await app.register(resilientHttp, { clients: { payments: { baseUrl: 'http://127.0.0.1:9' } } })
export const missing = app.httpClients.nope.get('/x')
`

/** Registers the plugin, serves a route that calls the upstream, prints what it saw. */
function consumerScript (load: string): string {
  return `${load}
const app = Fastify({ genReqId: plugin.requestIdGenerator() })
await app.register(plugin, { clients: { upstream: { baseUrl: process.env.UPSTREAM_URL + '/v1' } } })
app.get('/proxy', async (request) => (await request.server.httpClients.upstream.get('/echo')).raiseForStatus().json())
const reply = await app.inject({ url: '/proxy', headers: { 'x-request-id': 'consumer-1' } })
await app.close()
console.log(JSON.stringify({
  pluginType: typeof plugin,
  sameDefault: plugin.default === plugin && plugin.resilientHttp === plugin,
  createHttpClient: typeof plugin.createHttpClient,
  errorCode: new plugin.ClientClosedError({ clientName: 'x' }).code,
  reply: reply.json()
}))
`
}

const CJS_SCRIPT = consumerScript(`const plugin = require('fastify-resilient-http')
const Fastify = require('fastify')
;(async () => {`) + '})().catch((error) => { console.error(error); process.exitCode = 1 })\n'

const ESM_SCRIPT = consumerScript(`import plugin, { requestIdGenerator } from 'fastify-resilient-http'
import Fastify from 'fastify'
if (requestIdGenerator !== plugin.requestIdGenerator) throw new Error('named and default exports differ')`)

test('npm pack ships the build and types, and a consumer uses them', async (t) => {
  const tmp = await mkdtemp(path.join(tmpdir(), 'frh-package-'))
  t.teardown(() => rm(tmp, { recursive: true, force: true }))

  // `npm test` builds first; packing must not rebuild while other tests read dist/.
  // Under `npm test` (or npx) npm names its own CLI; calling it through node also works where `npm` is a .cmd shim.
  const npmCli = process.env.npm_execpath
  const [npm, npmArgs] = npmCli !== undefined && /\.c?js$/.test(npmCli) ? [process.execPath, [npmCli]] : ['npm', []]
  const packed = await run(npm, [...npmArgs, 'pack', '--ignore-scripts', '--json', '--pack-destination', tmp], {
    cwd: root,
    env: { ...process.env, npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' }
  })
  t.equal(packed.code, 0, `npm pack: ${packed.stderr}`)
  const [report] = JSON.parse(packed.stdout) as Array<{ filename: string }>
  const tarball = readTarball(await readFile(path.join(tmp, report.filename)))
  const files = [...tarball.keys()].map((name) => name.replace(/^package\//, '')).sort()

  for (const required of ['package.json', 'README.md', 'LICENSE', 'CHANGELOG.md', 'dist/plugin.js', 'dist/plugin.d.ts', 'types/index.d.ts', 'dist/lib/api/http-client.js', 'dist/lib/errors.d.ts']) {
    t.ok(files.includes(required), `the tarball has ${required}`)
  }
  for (const file of files) {
    t.notMatch(file, /(^|\/)(test|benchmarks?|example|coverage|\.tap|\.ci|fixtures)\//, `${file} is not a test, benchmark or example file`)
    t.notMatch(file, /\.(test|tst|bench)\.|(^|\/)\.taprc$/, `${file} is not a test or benchmark file`)
    t.notMatch(file, /^(lib\/|plugin\.ts$|tsconfig)/, `${file} is not a source file`)
    t.match(file, /^(package\.json|README\.md|LICENSE(\.md)?|CHANGELOG\.md|types\/index\.d\.ts|dist\/.+\.(js|d\.ts))$/, `${file} belongs in the package`)
  }

  const license = tarball.get('package/LICENSE')?.toString() ?? ''
  t.match(license, /^MIT License\n\nCopyright \(c\) \d{4} fastify-resilient-http contributors\n/, 'the MIT licence, with its copyright line')
  const manifest = JSON.parse(tarball.get('package/package.json')?.toString() ?? '{}') as {
    version?: string
    description?: string
    keywords?: string[]
    repository?: { type?: string, url?: string }
    homepage?: string
    bugs?: { url?: string }
    license?: string
    scripts?: Record<string, string>
    peerDependencies?: Record<string, string>
    peerDependenciesMeta?: Record<string, { optional?: boolean }>
  }
  t.equal(manifest.license, 'MIT')
  // npm 11 warns, on every install from a tarball or git, about a package whose manifest has a prepare script.
  t.equal(manifest.scripts?.prepare, undefined, 'no prepare script: the tarball ships the build')
  t.equal(manifest.scripts?.prepack, 'npm run build', 'packing builds first')
  t.equal(manifest.peerDependencies?.['@opentelemetry/api'], '^1.9.0')
  t.same(manifest.peerDependenciesMeta?.['@opentelemetry/api'], { optional: true }, 'OpenTelemetry is an optional peer')

  // What a registry page shows: a description, keywords, and where the code, the docs and the issues are.
  t.match(manifest.description, /\S.{40,}/, 'a description')
  for (const keyword of ['fastify', 'undici', 'retry', 'circuit-breaker', 'hedging', 'rate-limit', 'streaming', 'sse', 'ndjson']) {
    t.ok(manifest.keywords?.includes(keyword), `the keyword ${keyword}`)
  }
  t.equal(manifest.repository?.type, 'git')
  const repository = /^git\+(https:\/\/github\.com\/[\w.-]+\/[\w.-]+)\.git$/.exec(manifest.repository?.url ?? '')?.[1]
  t.ok(repository !== undefined, `the repository is a git+https URL (${manifest.repository?.url})`)
  t.equal(manifest.homepage, `${repository}#readme`, 'the homepage is the repository\'s README')
  t.equal(manifest.bugs?.url, `${repository}/issues`, 'issues go to the repository\'s tracker')
  // The changelog's newest entry is the version being packed.
  const changelog = tarball.get('package/CHANGELOG.md')?.toString() ?? ''
  t.equal(/^## \[(\d+\.\d+\.\d+)\]/m.exec(changelog)?.[1], manifest.version, `CHANGELOG.md opens with ${manifest.version}`)

  // A consumer project with the tarball installed; its dependencies are the repo's own, linked, so no network is needed.
  const consumer = path.join(tmp, 'consumer')
  const modules = path.join(consumer, 'node_modules')
  const installed = path.join(modules, 'fastify-resilient-http')
  for (const [name, contents] of tarball) {
    const target = path.join(installed, name.replace(/^package\//, ''))
    await mkdir(path.dirname(target), { recursive: true })
    await writeFile(target, contents)
  }
  await mkdir(path.join(modules, '@types'), { recursive: true })
  for (const dependency of ['fastify', 'fastify-plugin', 'form-data-encoder', 'undici', '@fastify', '@types/node']) {
    await symlink(path.join(root, 'node_modules', dependency), path.join(modules, dependency), 'junction')
  }
  await writeFile(path.join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }))
  await writeFile(path.join(consumer, 'cjs.cjs'), CJS_SCRIPT)
  await writeFile(path.join(consumer, 'esm.mjs'), ESM_SCRIPT)
  await writeFile(path.join(consumer, 'app.ts'), CONSUMER_TS)
  await writeFile(path.join(consumer, 'app.cts'), CONSUMER_CTS)
  await writeFile(path.join(consumer, 'bad.ts'), CONSUMER_BAD_TS)
  const compilerOptions = {
    module: 'node16',
    moduleResolution: 'node16',
    target: 'ES2022',
    lib: ['ES2022'],
    types: ['node'],
    strict: true,
    noEmit: true,
    skipLibCheck: false
  }
  // One compiler run for all three files: the good ones must add no error, the bad one exactly its own.
  await writeFile(path.join(consumer, 'tsconfig.json'), JSON.stringify({ compilerOptions, files: ['app.ts', 'app.cts', 'bad.ts'] }))

  const upstream = await startUpstream((_req, res, hit) => sendJson(res, 200, { path: hit.url, id: hit.headers['x-request-id'] }))
  t.teardown(() => upstream.close())
  const env = { PATH: process.env.PATH ?? '', UPSTREAM_URL: upstream.url }
  const expected = {
    pluginType: 'function',
    sameDefault: true,
    createHttpClient: 'function',
    errorCode: 'FRH_CLIENT_CLOSED',
    reply: { path: '/v1/echo', id: 'consumer-1' }
  }

  const cjs = await run(process.execPath, ['cjs.cjs'], { cwd: consumer, env })
  t.equal(cjs.code, 0, `require() from the consumer: ${cjs.stderr}`)
  t.same(JSON.parse(cjs.stdout), expected, 'require() gives the plugin and it works')

  const esm = await run(process.execPath, ['esm.mjs'], { cwd: consumer, env })
  t.equal(esm.code, 0, `import from the consumer: ${esm.stderr}`)
  t.same(JSON.parse(esm.stdout), expected, 'import gives the plugin and it works')
  t.equal(upstream.hits.length, 2)

  const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc')
  const checked = await run(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: consumer, env })
  const errors = checked.stdout.split('\n').filter((line) => /error TS\d+/.test(line))
  t.equal(errors.filter((line) => !line.startsWith('bad.ts')).length, 0, `app.ts and app.cts type-check against the packed types:\n${checked.stdout}${checked.stderr}`)
  t.equal(errors.length, 1, `bad.ts has exactly one type error:\n${checked.stdout}`)
  t.match(errors[0] ?? '', /^bad\.ts\(\d+,\d+\): error TS2339: Property 'nope' does not exist on type 'HttpClients'/, 'an unknown client name does not type-check')
  t.not(checked.code, 0, 'the compiler reports the failure')
})
