#!/usr/bin/env python3
"""A real HTTP server standing in for a process's /metrics endpoint in the
status test: Prometheus text whose counters grow by a fixed amount on each
scrape. Usage: metrics_server.py PORTFILE [SCALE]. Prints the port into
PORTFILE. SCALE (default 1) multiplies every count: 0.01 is a quiet system."""
import http.server
import sys

scrapes = 0


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global scrapes
        if self.path != "/metrics":
            self.send_error(404)
            return
        scrapes += 1
        k = scrapes * scale
        # Per scrape: 1000 commands (2 errors, 10 rejected), 19000 queries,
        # and 500 steps the invoice process manager sent (invoice.record).
        body = f"""# HELP cqrs_commands_total Commands handled, by type and outcome.
# TYPE cqrs_commands_total counter
cqrs_commands_total{{type="invoice.pay",outcome="ok",reason=""}} {988 * k}
cqrs_commands_total{{type="invoice.pay",outcome="rejected",reason="invoice.already_paid"}} {10 * k}
cqrs_commands_total{{type="invoice.issue",outcome="error",reason="store"}} {2 * k}
cqrs_commands_total{{type="invoice.record",outcome="ok",reason=""}} {500 * k}
# TYPE cqrs_queries_total counter
cqrs_queries_total{{name="invoice.by_id",outcome="ok"}} {19000 * k}
# TYPE cqrs_command_duration_seconds histogram
cqrs_command_duration_seconds_bucket{{type="invoice.pay",le="0.005"}} {900 * k}
cqrs_command_duration_seconds_bucket{{type="invoice.pay",le="0.05"}} {995 * k}
cqrs_command_duration_seconds_bucket{{type="invoice.pay",le="0.25"}} {1000 * k}
cqrs_command_duration_seconds_bucket{{type="invoice.pay",le="+Inf"}} {1000 * k}
cqrs_command_duration_seconds_sum{{type="invoice.pay"}} {3.5 * k}
cqrs_command_duration_seconds_count{{type="invoice.pay"}} {1000 * k}
# TYPE cqrs_query_duration_seconds histogram
cqrs_query_duration_seconds_bucket{{name="invoice.by_id",le="0.001"}} {18000 * k}
cqrs_query_duration_seconds_bucket{{name="invoice.by_id",le="0.01"}} {19000 * k}
cqrs_query_duration_seconds_bucket{{name="invoice.by_id",le="+Inf"}} {19000 * k}
cqrs_query_duration_seconds_sum{{name="invoice.by_id"}} {9.5 * k}
cqrs_query_duration_seconds_count{{name="invoice.by_id"}} {19000 * k}
# TYPE cqrs_projection_lag_seconds gauge
cqrs_projection_lag_seconds{{projection="billing.invoices"}} 0.004
cqrs_projection_lag_seconds{{projection="billing.balances"}} 0.25
cqrs_projection_lag_positions{{projection="billing.invoices",note="a \\"quoted\\" label"}} 3
cqrs_dead_letters_total{{subscriber="billing.invoices"}} 0
cqrs_head_position {5000 * k}
"""
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
server.serve_forever()
