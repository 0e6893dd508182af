/* ca.h — ward-agent's certificate authority (BoringSSL; with lib/tls.c the only code calling it).
 *
 * Either a self-signed root the agent generates on first start and persists in --state-dir
 * (ECDSA P-256; ca.pem 0644, ca-key.pem 0600 — a key file readable by others is refused), or an
 * operator-provided CA certificate + key (--ca-cert/--ca-key; an intermediate whose file may carry
 * its chain up to the root). It signs X509-SVIDs: exactly one URI SAN (the attested SPIFFE id),
 * cA=false, keyUsage digitalSignature (critical), EKU serverAuth+clientAuth, a random 128-bit
 * serial, notBefore backdated by 5 minutes for clock skew, notAfter = now + ttl (never past the
 * CA's own notAfter).
 *
 * Rotation: ward_ca_rotate_prepare() makes a new root and adds it to the bundle (old + new) while
 * signing continues with the old one; ward_ca_rotate_activate() switches signing to the new root
 * (the agent calls it once every connected proxy has ACKed the bundle, or after a timeout), and
 * ward_ca_rotate_finish() drops the old root from the bundle once no SVID signed by it can still be
 * valid. All state is persisted in the state dir (generated roots only).
 *
 * Errors: 0 or a negative WARD_E*; every failure writes a sentence for the operator into err. */
#ifndef WARD_CONTROL_CA_H
#define WARD_CONTROL_CA_H

#include <stddef.h>
#include <stdint.h>

typedef struct ward_ca ward_ca_t;

/* A DER certificate chain (leaf first); free with ward_der_chain_free(). */
typedef struct {
    uint8_t **der;
    size_t *len;
    size_t n;
} ward_der_chain_t;

void ward_der_chain_free(ward_der_chain_t *c);

/* Opens the CA. ca_cert/ca_key NULL: load or generate the root in state_dir (created 0700 if
 * missing). trust_domain is checked against ward_spiffe_td_validate(). */
int ward_ca_open(const char *state_dir, const char *ca_cert, const char *ca_key,
                 const char *trust_domain, ward_ca_t **out, char *err, size_t errlen);
void ward_ca_free(ward_ca_t *ca);
const char *ward_ca_trust_domain(const ward_ca_t *ca);

/* Signs a PKCS#10 CSR (DER) for spiffe_id. Refuses (WARD_ECERT / WARD_EKEY / WARD_ESPIFFE with
 * err set): a CSR whose self-signature does not verify; a weak key (EC other than P-256/P-384, RSA
 * below 2048 bits, anything else); a CSR asking for a URI SAN other than spiffe_id (or more than
 * one, or any other SAN type); spiffe_id outside the CA's trust domain. ttl_s > 0.
 * out gets the chain to present: leaf, then the CA's intermediates (not the root). */
int ward_ca_sign_csr(ward_ca_t *ca, const uint8_t *csr, size_t csr_len, const char *spiffe_id,
                     uint32_t ttl_s, ward_der_chain_t *out, char *err, size_t errlen);

/* Generates a P-256 key and signs an SVID for it (the Workload API hands both to a workload).
 * *key_pkcs8 is heap memory (ward_free) holding the PKCS#8 DER private key. */
int ward_ca_mint(ward_ca_t *ca, const char *spiffe_id, uint32_t ttl_s, ward_der_chain_t *chain,
                 uint8_t **key_pkcs8, size_t *key_len, char *err, size_t errlen);

/* The roots every workload should trust now (old + new during a rotation). Pointers stay valid
 * until the next rotate call or ward_ca_free(). */
size_t ward_ca_bundle(const ward_ca_t *ca, const uint8_t *const **der, const size_t **len);
/* A number that changes whenever the bundle's content changes. */
uint64_t ward_ca_bundle_generation(const ward_ca_t *ca);

int ward_ca_rotate_prepare(ward_ca_t *ca, char *err, size_t errlen);
int ward_ca_rotate_activate(ward_ca_t *ca, char *err, size_t errlen);
int ward_ca_rotate_finish(ward_ca_t *ca, char *err, size_t errlen);

#endif
