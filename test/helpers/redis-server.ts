import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import type { Test } from 'tap'
// A port that was listening a moment ago and is closed now is free for redis-server.
import { refusedPort as freePort } from './upstream'

/** A real `redis-server` (Debian's package) on 127.0.0.1, in a temporary folder, nothing saved. */
export interface RedisServer {
  port: number
  /** Stops it (SIGTERM, then SIGKILL), e.g. to take Redis away mid-run. */
  stop(): Promise<void>
  /** Starts it again on the same port, empty. */
  start(): Promise<void>
}

const INSTALL = 'redis-server is needed by the tests of the fleet rate limit and is not installed: run `apt-get update && apt-get install -y redis-server` (as root), then run the tests again'

function redisServerPath (): string {
  try {
    return execFileSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' }).trim()
  } catch {
    throw new Error(INSTALL)
  }
}

/**
 * Starts `redis-server` on a free port for the test and stops it in the
 * test's teardown. Without redis-server the test fails, saying how to
 * install it: the fleet's tests are never skipped.
 */
export async function startRedis (t: Test): Promise<RedisServer> {
  const binary = redisServerPath()
  const dir = mkdtempSync(path.join(tmpdir(), 'frh-redis-'))
  const port = await freePort()
  let child: ChildProcess | null = null

  async function start (): Promise<void> {
    const server = spawn(binary, ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no', '--daemonize', 'no'], { stdio: ['ignore', 'pipe', 'pipe'] })
    child = server
    let output = ''
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`redis-server did not start within 10 s:\n${output}`)), 10_000)
      server.stdout?.on('data', (chunk: Buffer) => {
        output += chunk.toString()
        if (output.includes('Ready to accept connections')) {
          clearTimeout(timer)
          resolve()
        }
      })
      server.on('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`redis-server exited (${code}):\n${output}`))
      })
    })
    server.removeAllListeners('exit')
    server.stdout?.resume()
    server.stderr?.resume()
  }

  async function stop (): Promise<void> {
    const server = child
    child = null
    if (server === null || server.exitCode !== null || server.signalCode !== null) return
    const exited = once(server, 'exit')
    server.kill('SIGTERM')
    const killer = setTimeout(() => server.kill('SIGKILL'), 3_000)
    await exited
    clearTimeout(killer)
  }

  await start()
  t.teardown(async () => {
    await stop()
    rmSync(dir, { recursive: true, force: true })
  })
  return { port, stop, start }
}
