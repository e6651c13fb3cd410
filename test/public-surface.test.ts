import path from 'node:path'
import { test } from 'tap'
import ts from 'typescript'
import { HttpClient, HttpResponse } from '../plugin'

// The public names are listed in two places, plugin.ts (what runs) and
// types/index.d.ts (what users see): this keeps the two the same.
const root = path.join(__dirname, '..')

/** The value exports that types/index.d.ts declares (its namespace's `export const`s and classes). */
function typedValueNames (): string[] {
  const file = path.join(root, 'types', 'index.d.ts')
  const program = ts.createProgram([file], { module: ts.ModuleKind.CommonJS, moduleResolution: ts.ModuleResolutionKind.Node10, esModuleInterop: true, skipLibCheck: true, noEmit: true })
  const checker = program.getTypeChecker()
  const source = program.getSourceFile(file) as ts.SourceFile
  const moduleSymbol = checker.getSymbolAtLocation(source) as ts.Symbol
  return checker.getExportsOfModule(moduleSymbol)
    .filter((symbol) => {
      const target = (symbol.flags & ts.SymbolFlags.Alias) !== 0 ? checker.getAliasedSymbol(symbol) : symbol
      return (target.flags & ts.SymbolFlags.Value) !== 0
    })
    .map((symbol) => symbol.name)
    .sort()
}

test('the runtime exports and the public types name the same values', async (t) => {
  const runtime = require(path.join(root, 'dist', 'plugin.js')) as Record<string, unknown>
  const runtimeNames = Object.keys(runtime).filter((name) => name !== '__esModule').sort()
  t.same(typedValueNames(), runtimeNames)
})

test('HttpClient and HttpResponse cannot be constructed by users: a clear TypeError', async (t) => {
  const construct = (Class: unknown, ...args: unknown[]): unknown => new (Class as new (...args: unknown[]) => unknown)(...args)
  t.throws(() => construct(HttpClient), { name: 'TypeError', message: 'HttpClient cannot be constructed: use createHttpClient() or register the plugin' })
  t.throws(() => construct(HttpClient, { name: 'users', baseUrl: 'http://127.0.0.1:1' }), { name: 'TypeError' })
  t.throws(() => construct(HttpClient, Symbol('made by createHttpClient or the plugin')), { name: 'TypeError' }, 'a look-alike token does not pass')
  t.throws(() => construct(HttpResponse), { name: 'TypeError', message: 'HttpResponse cannot be constructed: calls of an HttpClient resolve with one' })
  t.throws(() => construct(HttpResponse, {}, { clientName: 'users', attempts: 1 }), { name: 'TypeError' })
})
