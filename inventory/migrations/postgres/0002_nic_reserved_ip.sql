-- A NIC may carry a reserved IPv4 address: the authoritative DHCP server always hands it that
-- address (a static reservation).
ALTER TABLE machine_nics ADD COLUMN ip TEXT;
