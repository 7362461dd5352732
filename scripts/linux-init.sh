#!/bin/sh
# /init of the Linux test guest (scripts/fetch-linux.sh puts it in the initramfs).
# It starts processes that sleep in known places, tells what the kernel says about itself,
# prints the ready line, then reads commands from the serial console (ttyS0) one line at a
# time, with no prompt and no echo, so a test can send a command and wait for its marker.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp
sleep 100000 &
echo "kinspect-linux: pid nanosleep $!"
sleep 100001 | cat > /dev/null &
echo "kinspect-linux: pid pipe_read $!"
stty -echo -F /dev/console 2>/dev/null
echo "kinspect-linux: version $(cat /proc/version)"
echo "kinspect-linux: cmdline $(cat /proc/cmdline)"
echo "kinspect-linux: ready"
while true; do
    while IFS= read -r line; do
        eval "$line"
    done < /dev/console > /dev/console 2>&1
    sleep 1
done
