// Package dashboards holds the Grafana dashboards and Prometheus configuration for sandq.
package dashboards
