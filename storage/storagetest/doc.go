// Package storagetest is the conformance suite every storage.Backend runs.
// A backend's test calls Run with a function that returns a fresh, empty
// backend; the suite checks the contract written on storage.Backend and the
// repository layers on top of it.
package storagetest
