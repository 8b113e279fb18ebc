-- dhcp_leases gets a real key column (decision 26). Until now `mac` held the lease key
-- (`aa:bb:…`, `id:HEX`, `declined:IP`, decision 22); it becomes `lease_key` and `mac` is the
-- client's hardware address again: the key itself for MAC-keyed rows, NULL for a declined
-- hold (nobody owns it) and NULL for `id:` rows, whose chaddr was never stored (it is filled
-- in when the client renews).
ALTER TABLE dhcp_leases RENAME COLUMN mac TO lease_key;
ALTER TABLE dhcp_leases ADD COLUMN mac TEXT;
UPDATE dhcp_leases SET mac = lease_key
    WHERE lease_key NOT LIKE 'id:%' AND lease_key NOT LIKE 'declined:%';
