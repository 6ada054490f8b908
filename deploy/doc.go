// Package deploy holds what runs sandq on a Docker host: the worker image's
// Dockerfile and its configuration; compose.yaml at the repository root
// brings up the whole stack. Its test validates the compose file.
package deploy
