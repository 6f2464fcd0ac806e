import { defineTwoClientLane } from './two-client-lane.js';

// Lane 8 of the reliability lab (issue 3): the kernel here has no NFS client, so scripts/sshfs-lab.sh serves
// one directory from a private sshd on 127.0.0.1 and mounts it twice with sshfs; each sshfs process keeps
// its own attribute and directory caches, like two NFS hosts.
defineTwoClientLane({ name: 'sshfs', labScript: 'scripts/sshfs-lab.sh' });
