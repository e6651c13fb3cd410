// Preloaded into every test process (.taprc `node-arg`), after tap's coverage
// recorder has started in it. The child processes a test starts inherit tap's
// _TAPJS_PROCESSINFO_* environment, even from a test that passes a bare one,
// so they would record coverage as well: of lib/*.ts compiled by tsx, at other
// offsets than in the test process, which c8 would merge into nonsense.
// Clearing the flag here stops the recording in every child, and only there.
process.env._TAPJS_PROCESSINFO_COVERAGE_ = '0'
