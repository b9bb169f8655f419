package functions

// WantsHTML is wantsHTML, for a table of Accept headers.
var WantsHTML = wantsHTML
