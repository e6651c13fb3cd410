import { spawn } from 'node:child_process'
import type { Test } from 'tap'

export interface ChildResult {
  code: number | null
  signal: NodeJS.Signals | null
  /** True when the child had to be killed: it did not exit by itself. */
  killed: boolean
  stdout: string
  stderr: string
  /** ms from the child's first line of output to its exit. */
  exitAfterSummaryMs: number
}

/**
 * Runs a Node.js script in a bare environment (no test-runner hooks) and waits
 * for it to exit by itself. Starting node and loading Fastify can take long on
 * a busy machine, so the clock that matters starts at the child's first line
 * of output (its summary): from then on it must exit within `exitWithinMs`,
 * or it is killed and `killed` says so.
 */
export async function runChildThatMustExit (t: Test, args: string[], options: { env?: Record<string, string>, cwd?: string, exitWithinMs?: number } = {}): Promise<ChildResult> {
  const child = spawn(process.execPath, args, {
    cwd: options.cwd,
    env: { PATH: process.env.PATH ?? '', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let killed = false
  const kill = (): void => {
    killed = true
    child.kill('SIGKILL')
  }
  let killer = setTimeout(kill, 90_000)
  t.teardown(() => {
    clearTimeout(killer)
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  let stdout = ''
  let stderr = ''
  let summarizedAt = 0
  child.stdout.on('data', (chunk: Buffer) => {
    stdout += chunk.toString()
    if (summarizedAt === 0 && stdout.includes('\n')) {
      summarizedAt = Date.now()
      clearTimeout(killer)
      killer = setTimeout(kill, options.exitWithinMs ?? 10_000)
    }
  })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => {
    child.on('close', (exitCode, exitSignal) => resolve([exitCode, exitSignal]))
  })
  clearTimeout(killer)
  return { code, signal, killed, stdout, stderr, exitAfterSummaryMs: summarizedAt === 0 ? -1 : Date.now() - summarizedAt }
}
