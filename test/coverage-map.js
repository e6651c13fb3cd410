'use strict'
// Every test counts toward the coverage of the library and the plugin.
module.exports = () => ['plugin.ts', 'lib/**/*.ts']
