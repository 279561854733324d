// Command etcd is etcd's own server entry point (go.etcd.io/etcd/server/v3/etcdmain) at the
// release Kubernetes v1.34.4 is built against, so the cluster needs no etcd package of its own.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
