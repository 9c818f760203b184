// Command ferretdb-launcher runs an embedded FerretDB (SQLite backend, or
// PostgreSQL with -postgresql URL) for libcqrs's integration tests and
// benchmarks. The plain `go install` binary of FerretDB
// v1.24 panics for want of a version file; embedding the ferretdb package
// avoids that. Telemetry is off, there is no state or debug listener, and
// the data lives in the directory given.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:27017", "TCP address to listen on")
	dir := flag.String("dir", "", "SQLite data directory (required for SQLite)")
	postgresql := flag.String("postgresql", "", "PostgreSQL URL: use the PostgreSQL backend instead of SQLite")
	verbose := flag.Bool("v", false, "log at info level (default: errors only)")
	flag.Parse()
	if *dir == "" && *postgresql == "" {
		fmt.Fprintln(os.Stderr, "ferretdb-launcher: -dir is required")
		os.Exit(2)
	}
	if *postgresql == "" {
		if err := os.MkdirAll(*dir, 0o700); err != nil {
			fmt.Fprintf(os.Stderr, "ferretdb-launcher: %v\n", err)
			os.Exit(1)
		}
	}
	level := slog.LevelError
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	config := &ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listen},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: "file:" + *dir + "/",
	}
	if *postgresql != "" {
		config.Handler = "postgresql"
		config.SQLiteURL = ""
		config.PostgreSQLURL = *postgresql
	}
	f, err := ferretdb.New(config)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb-launcher: %v\n", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Printf("ferretdb-launcher: listening on %s\n", *listen)
	if err := f.Run(ctx); err != nil && ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "ferretdb-launcher: %v\n", err)
		os.Exit(1)
	}
}
