import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { test } from 'tap'
import {
  DEFAULT_BREAKER, DEFAULT_CONNECTIONS, DEFAULT_HEDGE, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_IN_FLIGHT, DEFAULT_OUTLIER, DEFAULT_RETRY, DEFAULT_TIMEOUT,
  DEFAULT_TOTAL_TIMEOUT, resolveClientOptions, resolvePluginOptions
} from '../lib/options/resolve'

// The ```ts and ```js blocks of README.md and of every docs/*.md page are
// compiled against the published types and, when marked
// `<!-- readme-test: run -->`, run (as tsc emitted them), in a scratch
// project that depends on this package the way a user's project does:
// node_modules/fastify-resilient-http links to this repo, which resolves
// through package.json "exports" to types/ and dist/. Every block of every
// page is compiled in one tsc run; a failure names the page and its line.

const ROOT = path.resolve(__dirname, '..')
const MARKER = /^<!--\s*readme-test:\s*(\S+)\s*-->$/
const TSC_TIMEOUT_MS = 120_000
const RUN_TIMEOUT_MS = 30_000
/** A newcomer reads the README in five minutes; the rest is in docs/. */
const README_MAX_LINES = 250
const OPTIONS_PAGE = 'docs/options.md'

type Mode = 'check' | 'run' | 'skip'

interface Block {
  /** The page, relative to the repo: `README.md`, `docs/streaming.md`. */
  file: string
  lang: 'ts' | 'js'
  /** The page's line of the opening fence. */
  line: number
  code: string
  mode: Mode
}

/** README.md, then every page of docs/, by name. */
async function pages (): Promise<string[]> {
  const docs = (await readdir(path.join(ROOT, 'docs'))).filter((name) => name.endsWith('.md')).sort()
  return ['README.md', ...docs.map((name) => `docs/${name}`)]
}

function extractBlocks (file: string, markdown: string): Block[] {
  const lines = markdown.split('\n')
  const blocks: Block[] = []
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\w*)\s*$/.exec(lines[i])
    if (open === null) continue
    let end = i + 1
    while (end < lines.length && lines[end] !== '```') end++
    if (end === lines.length) throw new Error(`${file}:${i + 1}: a code block that is never closed`)
    const lang = open[1]
    if (lang === 'ts' || lang === 'js') {
      let before = i - 1
      while (before >= 0 && lines[before].trim() === '') before--
      const marker = before >= 0 ? MARKER.exec(lines[before].trim()) : null
      const mode = marker === null ? 'check' : marker[1]
      if (mode !== 'check' && mode !== 'run' && mode !== 'skip') throw new Error(`${file}:${before + 1}: unknown readme-test marker "${mode}"`)
      blocks.push({ file, lang, line: i + 1, code: lines.slice(i + 1, end).join('\n'), mode })
    }
    i = end
  }
  return blocks
}

/** `docs/streaming.md` as `docs-streaming`: a block's file name says where it came from. */
function slug (file: string): string {
  return file.replace(/\.md$/, '').replace(/[^\w]+/g, '-')
}

function fileName (block: Block): string {
  return `${slug(block.file)}-L${block.line}.${block.lang === 'ts' ? 'ts' : 'cjs'}`
}

function emittedName (block: Block): string {
  return `${slug(block.file)}-L${block.line}.${block.lang === 'ts' ? 'js' : 'cjs'}`
}

interface Run {
  code: number | null
  output: string
  timedOut: boolean
}

function run (command: string, args: string[], cwd: string, timeout: number): Promise<Run> {
  const env = { ...process.env }
  // Leave the test runner's loaders and coverage out of the child.
  delete env.NODE_OPTIONS
  delete env.NODE_V8_COVERAGE
  return new Promise((resolve) => {
    execFile(command, args, { cwd, env, timeout, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : null
      resolve({ code, output: `${stdout}${stderr}`, timedOut: error?.killed === true })
    })
  })
}

/** A project whose node_modules holds this package (a link to the repo) and the repo's dependencies. */
async function makeProject (blocks: Block[]): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'frh-docs-'))
  await writeFile(path.join(dir, 'package.json'), JSON.stringify({ name: 'docs-blocks', private: true, type: 'module' }))
  await writeFile(path.join(dir, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      target: 'ES2022',
      module: 'node16',
      moduleResolution: 'node16',
      strict: true,
      outDir: 'out',
      skipLibCheck: true,
      allowJs: true,
      checkJs: true,
      types: ['node']
    },
    include: ['blocks/*']
  }))
  const modules = path.join(dir, 'node_modules')
  await mkdir(modules)
  for (const entry of await readdir(path.join(ROOT, 'node_modules'))) {
    if (entry.startsWith('.') || entry === 'fastify-resilient-http') continue
    await symlink(path.join(ROOT, 'node_modules', entry), path.join(modules, entry), 'dir')
  }
  await symlink(ROOT, path.join(modules, 'fastify-resilient-http'), 'dir')
  await mkdir(path.join(dir, 'blocks'))
  for (const block of blocks) {
    // `export {}` keeps each TypeScript block a module of its own.
    const code = block.lang === 'ts' ? `${block.code}\nexport {}\n` : `${block.code}\n`
    await writeFile(path.join(dir, 'blocks', fileName(block)), code)
  }
  return dir
}

/** tsc's `blocks/docs-streaming-L12.ts(3,5)` as `docs/streaming.md:15:5`, the line a reader edits. */
function toPageLocations (output: string, files: string[]): string {
  const bySlug = new Map(files.map((file) => [slug(file), file]))
  return output.replace(/blocks\/([\w-]+)-L(\d+)\.(?:ts|cjs)\((\d+),(\d+)\)/g, (all, name: string, fence: string, line: string, column: string) => {
    const file = bySlug.get(name)
    return file === undefined ? all : `${file}:${Number(fence) + Number(line)}:${column}`
  })
}

/**
 * A default as the options tables write it (`10_000`, `'full'`, `{ ratio: 0.2 }`), as a value.
 * A cell with words around its value (`` `10_000` (or `totalTimeout` ...) ``) is read by its first code span.
 */
function parseDefault (cell: string): unknown {
  const span = /^`([^`]+)`/.exec(cell)
  const json = (span === null ? cell : span[1])
    .replace(/(\d)_(\d)/g, '$1$2')
    .replace(/'/g, '"')
    .replace(/([A-Za-z]\w*):/g, '"$1":')
  return JSON.parse(json)
}

/** The `option | default | meaning` rows of the table under `heading`. */
function tableDefaults (markdown: string, heading: string): Map<string, string> {
  const start = markdown.indexOf(`\n${heading}\n`)
  if (start === -1) throw new Error(`${OPTIONS_PAGE} has no heading ${heading}`)
  const rows = new Map<string, string>()
  const lines = markdown.slice(start + heading.length + 2).split('\n')
  let inTable = false
  for (const line of lines) {
    if (line.startsWith('|')) {
      inTable = true
      const cells = line.split('|').slice(1, -1).map((cell) => cell.trim())
      const option = /^`(\w+)`$/.exec(cells[0])
      if (option !== null) rows.set(option[1], cells[1])
    } else if (inTable) {
      break
    }
  }
  return rows
}

/** Runs `start` for each item, at most `width` at once; the promises in the items' order. */
function limited<T, R> (items: T[], width: number, start: (item: T) => Promise<R>): Array<Promise<R>> {
  const lanes: Array<Promise<unknown>> = []
  return items.map((item, i) => {
    // Item i starts once item i - width has ended.
    const after = i < width ? Promise.resolve() : lanes[i - width]
    const result = after.then(() => start(item))
    lanes.push(result.catch(() => {}))
    return result
  })
}

test('the code blocks of the README and of docs/', async (t) => {
  const files = await pages()
  const blocks: Block[] = []
  for (const file of files) blocks.push(...extractBlocks(file, await readFile(path.join(ROOT, file), 'utf8')))
  const checked = blocks.filter((block) => block.mode !== 'skip')
  const runnable = blocks.filter((block) => block.mode === 'run')

  t.ok(files.length >= 15, `docs/ has a page per concern (found ${files.length - 1})`)
  t.ok(blocks.filter((block) => block.file === 'README.md').length >= 2, 'the README has a quick start')
  t.ok(runnable.length >= 8, `blocks that can run do (found ${runnable.length})`)
  t.ok(blocks.some((block) => block.lang === 'js' && block.mode === 'run'), 'a CommonJS block runs')
  t.ok(blocks.length - checked.length <= 1, 'skipped blocks stay rare')

  const dir = await makeProject(checked)
  t.teardown(() => rm(dir, { recursive: true, force: true }))

  await t.test('every block type-checks against the published types', async (t) => {
    // One tsc run for every page (it is the slow part); it also emits the blocks to out/, as plain ES modules for node to run.
    const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
    const result = await run(process.execPath, [tsc, '-p', 'tsconfig.json'], dir, TSC_TIMEOUT_MS)
    t.notOk(result.timedOut, 'tsc finished in time')
    t.equal(result.code, 0, 'tsc reports no error', { output: toPageLocations(result.output, files) })
  })

  // Independent programs on port 0: a few side by side (the deadline example measures time), reported one by one.
  const runs = limited(runnable, 4, (block) => run(process.execPath, [path.join('out', emittedName(block))], dir, RUN_TIMEOUT_MS))
  for (const [i, block] of runnable.entries()) {
    await t.test(`${block.file}:${block.line} runs`, async (t) => {
      const result = await runs[i]
      t.notOk(result.timedOut, 'it ends by itself')
      t.equal(result.code, 0, 'it exits 0', { output: result.output })
    })
  }
})

/** GitHub's anchor of a heading: lower case, punctuation dropped, spaces as dashes. */
function anchorOf (heading: string): string {
  return heading.trim().toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-')
}

/** The anchors a page's headings make (outside code blocks), a repeated heading numbered as GitHub does. */
function anchors (markdown: string): Set<string> {
  const seen = new Map<string, number>()
  const found = new Set<string>()
  let fenced = false
  for (const line of markdown.split('\n')) {
    if (line.startsWith('```')) fenced = !fenced
    const heading = fenced ? null : /^#{1,6}\s+(.+)$/.exec(line)
    if (heading === null) continue
    const base = anchorOf(heading[1])
    const count = seen.get(base) ?? 0
    seen.set(base, count + 1)
    found.add(count === 0 ? base : `${base}-${count}`)
  }
  return found
}

/** The relative links of a page (outside code blocks): `[text](target)`, with their line. */
function links (markdown: string): Array<{ line: number, target: string }> {
  const found: Array<{ line: number, target: string }> = []
  let fenced = false
  for (const [i, line] of markdown.split('\n').entries()) {
    if (line.startsWith('```')) fenced = !fenced
    if (fenced) continue
    for (const match of line.matchAll(/\]\(([^)\s]+)\)/g)) {
      if (!/^[a-z]+:/.test(match[1])) found.push({ line: i + 1, target: match[1] })
    }
  }
  return found
}

test('the README is short, docs/README.md lists every page, and every link leads somewhere', async (t) => {
  const files = await pages()
  const text = new Map<string, string>()
  for (const file of files) text.set(file, await readFile(path.join(ROOT, file), 'utf8'))
  const readme = text.get('README.md') as string
  const readmeLines = readme.split('\n').length
  t.ok(readmeLines <= README_MAX_LINES, `README.md has ${readmeLines} lines (at most ${README_MAX_LINES})`)
  t.ok(readme.indexOf('## Two commands') < readme.indexOf('\n## ', readme.indexOf('## Two commands') + 1) && readme.includes('npm ci && npm run example'), 'the two commands come first')

  const index = text.get('docs/README.md')
  t.ok(index !== undefined, 'docs/README.md is the index of docs/')
  const listed = new Set(links(index ?? '').map((link) => link.target.split('#')[0]))
  for (const file of files.filter((file) => file.startsWith('docs/') && file !== 'docs/README.md')) {
    t.ok(listed.has(path.basename(file)), `docs/README.md lists ${file}`)
  }

  const anchorsOf = new Map<string, Set<string>>()
  const broken: string[] = []
  for (const [file, markdown] of text) {
    for (const { line, target } of links(markdown)) {
      const [where, fragment] = target.split('#')
      const resolved = where === '' ? file : path.posix.normalize(path.posix.join(path.posix.dirname(file), where))
      let exists = true
      try {
        await readFile(path.join(ROOT, resolved))
      } catch {
        // A folder (benchmarks/results/) is a fine target too.
        exists = await readdir(path.join(ROOT, resolved)).then(() => true, () => false)
      }
      if (!exists) {
        broken.push(`${file}:${line}: ${target} (no ${resolved})`)
        continue
      }
      if (fragment === undefined || !resolved.endsWith('.md')) continue
      let known = anchorsOf.get(resolved)
      if (known === undefined) {
        known = anchors(text.get(resolved) ?? await readFile(path.join(ROOT, resolved), 'utf8'))
        anchorsOf.set(resolved, known)
      }
      if (!known.has(fragment)) broken.push(`${file}:${line}: ${target} (no heading #${fragment} in ${resolved})`)
    }
  }
  t.same(broken, [], 'every relative link and anchor resolves')
})

test('the options page documents the defaults the code has', async (t) => {
  const markdown = await readFile(path.join(ROOT, OPTIONS_PAGE), 'utf8')

  const client = tableDefaults(markdown, '## Client options (per client, or in `defaults`)')
  t.equal(parseDefault(client.get('timeout') ?? ''), DEFAULT_TIMEOUT)
  t.equal(parseDefault(client.get('totalTimeout') ?? ''), DEFAULT_TOTAL_TIMEOUT)
  t.same(parseDefault(client.get('pool') ?? ''), { connections: DEFAULT_CONNECTIONS })
  t.equal(parseDefault(client.get('maxInFlight') ?? ''), DEFAULT_MAX_IN_FLIGHT)
  const resolved = resolveClientOptions('probe', { baseUrl: 'http://127.0.0.1' }, '')
  t.equal(parseDefault(client.get('hedge') ?? ''), resolved.hedge, 'hedging is off by default')
  t.equal(parseDefault(client.get('adaptiveConcurrency') ?? ''), resolved.adaptiveConcurrency, 'the adaptive limit is off by default')
  t.equal(resolved.outlierDetection, false, 'one baseUrl: no outlier detection')
  t.match(client.get('outlierDetection'), /with replicas/, 'outlier detection is on with replicas')
  t.same([...client.keys()], ['baseUrl', 'timeout', 'totalTimeout', 'defaultHeaders', 'propagateRequestId', 'retry',
    'circuitBreaker', 'pool', 'maxResponseBytes', 'dispatcher', 'hedge', 'maxInFlight', 'adaptiveConcurrency', 'outlierDetection', 'idleTimeout', 'followRedirects', 'auth', 'rateLimit'])
  t.equal(parseDefault(client.get('followRedirects') ?? ''), resolveClientOptions('probe', { baseUrl: 'http://127.0.0.1' }, '').followRedirects)
  t.equal(parseDefault(client.get('idleTimeout') ?? ''), DEFAULT_IDLE_TIMEOUT)

  const retry = tableDefaults(markdown, '## `retry`')
  const { lowestRetryStatus, ...retryDefaults } = DEFAULT_RETRY
  t.equal(lowestRetryStatus, Math.min(...retryDefaults.statusCodes))
  t.same([...retry.keys()].sort(), Object.keys(retryDefaults).sort(), 'every retry option has a row')
  for (const [option, value] of Object.entries(retryDefaults)) {
    t.same(parseDefault(retry.get(option) ?? ''), value, `retry.${option} defaults to ${JSON.stringify(value)}`)
  }

  const breaker = tableDefaults(markdown, '## `circuitBreaker`')
  t.same([...breaker.keys()].sort(), Object.keys(DEFAULT_BREAKER).sort(), 'every circuitBreaker option has a row')
  for (const [option, value] of Object.entries(DEFAULT_BREAKER)) {
    if (value === undefined) t.equal(breaker.get(option), 'none', `circuitBreaker.${option} is off by default`)
    else if (option === 'recoveryMaxMs') t.equal(breaker.get(option), '`recoveryMs`', 'recoveryMaxMs follows recoveryMs')
    else t.same(parseDefault(breaker.get(option) ?? ''), value, `circuitBreaker.${option} defaults to ${value}`)
  }
  t.equal(DEFAULT_BREAKER.recoveryMaxMs, DEFAULT_BREAKER.recoveryMs)

  const hedge = tableDefaults(markdown, '## `hedge`')
  t.same([...hedge.keys()].sort(), Object.keys(DEFAULT_HEDGE).sort(), 'every hedge option has a row')
  for (const [option, value] of Object.entries(DEFAULT_HEDGE)) {
    t.same(parseDefault(hedge.get(option) ?? ''), value, `hedge.${option} defaults to ${JSON.stringify(value)}`)
  }

  const outlier = tableDefaults(markdown, '## `outlierDetection`')
  t.same([...outlier.keys()].sort(), Object.keys(DEFAULT_OUTLIER).sort(), 'every outlierDetection option has a row')
  const withReplicas = resolveClientOptions('probe', { baseUrl: ['http://127.0.0.1:1', 'http://127.0.0.1:2'] }, '')
  t.same(withReplicas.outlierDetection, DEFAULT_OUTLIER, 'on by default with replicas')
  for (const [option, value] of Object.entries(DEFAULT_OUTLIER)) {
    t.same(parseDefault(outlier.get(option) ?? ''), value, `outlierDetection.${option} defaults to ${value}`)
  }

  const adaptive = tableDefaults(markdown, '## `adaptiveConcurrency`')
  const adaptiveDefaults = resolveClientOptions('probe', { baseUrl: 'http://127.0.0.1', adaptiveConcurrency: true }, '').adaptiveConcurrency
  t.same([...adaptive.keys()].sort(), Object.keys(adaptiveDefaults).sort(), 'every adaptiveConcurrency option has a row')
  if (adaptiveDefaults !== false) {
    t.equal(parseDefault(adaptive.get('initial') ?? ''), adaptiveDefaults.initial)
    t.equal(parseDefault(adaptive.get('min') ?? ''), adaptiveDefaults.min)
    t.equal(adaptiveDefaults.max, DEFAULT_MAX_IN_FLIGHT, 'max follows maxInFlight')
    t.match(adaptive.get('max'), /^`maxInFlight`/)
  }
  const unlimited = resolveClientOptions('probe', { baseUrl: 'http://127.0.0.1', maxInFlight: false, adaptiveConcurrency: true }, '').adaptiveConcurrency
  t.equal(unlimited === false ? undefined : unlimited.max, 1_000, 'max without maxInFlight')
  t.match(adaptive.get('max'), /`1_000` when `maxInFlight` is `false`/, 'the options page says so')

  const deadline = tableDefaults(markdown, '## `deadline`')
  const deadlineDefaults = resolvePluginOptions({ clients: { probe: { baseUrl: 'http://127.0.0.1' } }, deadline: true }).deadline
  t.same([...deadline.keys()].sort(), Object.keys(deadlineDefaults).sort(), 'every deadline option has a row')
  for (const [option, value] of Object.entries(deadlineDefaults)) {
    t.same(parseDefault(deadline.get(option) ?? ''), value, `deadline.${option} defaults to ${JSON.stringify(value)}`)
  }

  const plugin = tableDefaults(markdown, '## Plugin options')
  t.same([...plugin.keys()], ['clients', 'defaults', 'requestIdHeader', 'echoRequestId', 'propagateHeaders', 'deadline'])
  const pluginDefaults = resolvePluginOptions({ clients: { probe: { baseUrl: 'http://127.0.0.1' } } })
  for (const option of ['requestIdHeader', 'echoRequestId', 'propagateHeaders', 'deadline'] as const) {
    t.same(parseDefault(plugin.get(option) ?? ''), pluginDefaults[option], `${option} defaults to ${JSON.stringify(pluginDefaults[option])}`)
  }
})
