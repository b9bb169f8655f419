package functions

// FailOnPanic is failOnPanic, for tests of orchestrators that panic.
var FailOnPanic = failOnPanic

// WantsHTML is wantsHTML, for a table of Accept headers.
var WantsHTML = wantsHTML
