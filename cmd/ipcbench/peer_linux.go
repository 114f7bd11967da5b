package main

import (
	"os/exec"
	"syscall"
)

// setParentDeath has the kernel kill the peer if ipcbench dies.
func setParentDeath(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
