// Public-area templates of the keys outpost creates.
#pragma once

#include <tss2/tss2_esys.h>

#include "outpost/attestation/tpm.h"

namespace outpost::attestation::detail {

TPM2B_PUBLIC primary_template(PrimaryKey kind);
TPM2B_PUBLIC signing_key_template();
// A KEYEDHASH data object for TPM2_Create with the data in inSensitive: unsealed with the
// empty password, never exported or moved to another parent.
TPM2B_PUBLIC sealed_data_template();
// The hierarchy a primary of `kind` lives in (ESYS_TR_RH_OWNER or ESYS_TR_RH_ENDORSEMENT).
ESYS_TR primary_hierarchy(PrimaryKey kind);

}  // namespace outpost::attestation::detail
