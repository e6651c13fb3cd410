'use strict'
// Used by .taprc: whatever the test file, coverage is recorded for the shipped
// source only. tap matches the globs against the files of each process, and a
// file counts when it or its source map's source is listed, so dist/ (no
// source maps), the tests and their helpers never do.
const SOURCE = ['plugin.ts', 'lib/**/*.ts']

module.exports = () => SOURCE
