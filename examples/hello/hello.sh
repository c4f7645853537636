#!/bin/sh
echo "$GREETING, $1!"
echo "I am $(id -un) (uid $(id -u)) in $(pwd) on $(hostname), kernel $(uname -r)"
echo "I have $(grep -c ^processor /proc/cpuinfo) vCPU and $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB of memory"
